#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// y[r] = (x[r] * (1 / sqrt(mean(x[r]^2) + eps))) * w, one workgroup per row. Rows of x start at
// row `inRow`; y may alias x (per-head q/k norms run in place). The squares are rounded to
// float and summed in double, the mean rounded to float, as the reference does.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(std430, binding = 0) buffer X { float x[]; };
layout(std430, binding = 1) readonly buffer W { float w[]; };
layout(std430, binding = 2) buffer Y { float y[]; };
layout(push_constant) uniform P { uint n; uint inRow; float eps; } p;
#ifdef HAS_F64
shared double red[WG];
#else
shared float red[WG];
#endif

void main() {
    uint row = gl_WorkGroupID.x;
    uint lid = gl_LocalInvocationID.x;
    uint inBase = (row + p.inRow) * p.n;
    uint outBase = row * p.n;
#ifdef HAS_F64
    double s = 0.0;
#else
    float s = 0.0;
#endif
    for (uint i = lid; i < p.n; i += WG) {
        float v = x[inBase + i];
        precise float sq = v * v;
        s += sq;
    }
    red[lid] = s;
    barrier();
    for (uint o = WG / 2u; o > 0u; o >>= 1) {
        if (lid < o) red[lid] += red[lid + o];
        barrier();
    }
#ifdef HAS_F64
    float mean = roundToFloat(red[0] / double(p.n));
#else
    float mean = red[0] / float(p.n);
#endif
    precise float me = mean + p.eps;
    float scale = divExact(1.0, sqrtExact(me));
    barrier();
    for (uint i = lid; i < p.n; i += WG) {
        precise float v = (x[inBase + i] * scale) * w[i];
        y[outBase + i] = v;
    }
}
