#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Activations to 8-bit blocks of 32: d = amax/127, q = round-half-even(x * (127/amax)),
// stored d = half(d), s = half(d * sum(q)). One invocation per block; rows of x start at `inRow`.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Q { uint qs[]; };
layout(std430, binding = 2) writeonly buffer D { vec2 ds[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint blocks; uint inRow; } p;

void main() {
    uint b = gl_GlobalInvocationID.x;
    if (b >= p.blocks) return;
    uint base = (p.inRow * p.blocksPerRow + b) * 32u;
    float amax = 0.0;
    for (uint j = 0u; j < 32u; j++) amax = max(amax, abs(x[base + j]));
    float d = divExact(amax, 127.0);
    float id = amax != 0.0 ? divExact(127.0, amax) : 0.0;
    int sum = 0;
    for (uint w = 0u; w < 8u; w++) {
        uint packed = 0u;
        for (uint k = 0u; k < 4u; k++) {
            precise float scaled = x[base + w * 4u + k] * id;
            int q = int(roundEven(scaled));
            sum += q;
            packed |= (uint(q) & 0xFFu) << (8u * k);
        }
        qs[b * 8u + w] = packed;
    }
    precise float s = d * float(sum);
    ds[b] = vec2(roundHalf(d), roundHalf(s));
}
