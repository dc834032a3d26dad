#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Stores this step's k and v rows into the half-precision caches: row t at position
// rowInfo[t].x + rowInfo[t].y - 1 (its slot's start plus its position in the sequence).
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) writeonly buffer KC { uint kc[]; };
layout(std430, binding = 3) writeonly buffer VC { uint vc[]; };
layout(std430, binding = 4) readonly buffer R { uvec2 rowInfo[]; };
layout(push_constant) uniform P { uint kvDim; uint tokens; } p;

void main() {
    uint half_ = p.kvDim / 2u;
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.tokens * half_) return;
    uint t = id / half_;
    uint j = id % half_;
    uint src = t * p.kvDim + 2u * j;
    uint dst = (rowInfo[t].x + rowInfo[t].y - 1u) * half_ + j;
    kc[dst] = halfBits(k[src]) | (halfBits(k[src + 1u]) << 16);
    vc[dst] = halfBits(v[src]) | (halfBits(v[src + 1u]) << 16);
}
