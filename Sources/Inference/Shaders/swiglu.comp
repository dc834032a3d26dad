#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// out = silu(g) * u with silu(x) = x / (1 + exp(-x)), exp and division as the reference's.
// out may alias g.
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer G { float g[]; };
layout(std430, binding = 1) readonly buffer U { float u[]; };
layout(std430, binding = 2) buffer O { float o[]; };
layout(push_constant) uniform P { uint count; } p;

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= p.count) return;
    float x = g[i];
    precise float negated = 0.0 - x;
    precise float denominator = 1.0 + refExp(negated);
    precise float r = divExact(x, denominator) * u[i];
    o[i] = r;
}
