#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Stores this step's k and v rows into the half-precision caches at positions start + t.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) writeonly buffer KC { uint kc[]; };
layout(std430, binding = 3) writeonly buffer VC { uint vc[]; };
layout(push_constant) uniform P { uint kvDim; uint tokens; uint start; } p;

void main() {
    uint half_ = p.kvDim / 2u;
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.tokens * half_) return;
    uint t = id / half_;
    uint j = id % half_;
    uint src = t * p.kvDim + 2u * j;
    uint dst = (p.start + t) * half_ + j;
    kc[dst] = halfBits(k[src]) | (halfBits(k[src + 1u]) << 16);
    vc[dst] = halfBits(v[src]) | (halfBits(v[src + 1u]) << 16);
}
