#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Activations to 8-bit blocks of 256 for the K-quant kernels (ggml's Q8_K): max = the value of
// largest magnitude (the first, on ties), iscale = -127/max, q = min(127, round-half-even(x *
// iscale)), d = 1/iscale. One invocation per block; rows of x start at `inRow`.
layout(local_size_x = 64) in;
layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Q { uint qs[]; };
layout(std430, binding = 2) writeonly buffer D { float ds[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint blocks; uint inRow; } p;

void main() {
    uint b = gl_GlobalInvocationID.x;
    if (b >= p.blocks) return;
    uint base = (p.inRow * p.blocksPerRow + b) * 256u;
    float amax = 0.0;
    float vmax = 0.0;
    for (uint j = 0u; j < 256u; j++) {
        float v = x[base + j];
        if (abs(v) > amax) { amax = abs(v); vmax = v; }
    }
    if (amax == 0.0) {
        for (uint w = 0u; w < 64u; w++) qs[b * 64u + w] = 0u;
        ds[b] = 0.0;
        return;
    }
    float iscale = divExact(-127.0, vmax);
    for (uint w = 0u; w < 64u; w++) {
        uint packed = 0u;
        for (uint k = 0u; k < 4u; k++) {
            precise float scaled = x[base + w * 4u + k] * iscale;
            int q = min(127, int(roundEven(scaled)));
            packed |= (uint(q) & 0xFFu) << (8u * k);
        }
        qs[b * 64u + w] = packed;
    }
    ds[b] = divExact(1.0, iscale);
}
