#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// As matmul_quant.comp for F16 (WF16) and F32 weights against f32 activations (rounded to half
// for F16 weights, as the reference does). Two summation orders, as the reference has two
// kernels: flags&4 (a prompt batch): lane j accumulates elements j, j+8, … and the lanes are
// summed as hsum_float_8; otherwise (one token): four accumulators of eight lanes over steps of
// 32 elements, reduced pairwise, lanes summed with hadd, the K % 32 tail added in double.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 2) const uint TN = 1;
#ifdef WF16
layout(std430, binding = 0) readonly buffer WQ { uint wq[]; };
#else
layout(std430, binding = 0) readonly buffer WQ { float wq[]; };
#endif
layout(std430, binding = 1) readonly buffer WS { uint unused0[]; };
layout(std430, binding = 2) readonly buffer XF { float x[]; };
layout(std430, binding = 3) readonly buffer XD { uint unused1[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
layout(std430, binding = 5) readonly buffer B { float bias[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint rows; uint tokens; uint rowBase; uint yStride; uint flags; } p;
shared float lanes[WG * TN];

float weight(uint e) {
#ifdef WF16
    vec2 pair = unpackHalf2x16(wq[e / 2u]);
    return (e & 1u) != 0u ? pair.y : pair.x;
#else
    return wq[e];
#endif
}

float activation(uint e) {
#ifdef WF16
    return roundHalf(x[e]);
#else
    return x[e];
#endif
}

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint lane = lid % 8u;
    uint row = gl_WorkGroupID.x * (WG / 8u) + lid / 8u;
    uint tokenBase = gl_WorkGroupID.y * TN;
    uint k = p.blocksPerRow * 32u;
    bool batch = (p.flags & 4u) != 0u;
    float acc[TN];
    for (uint t = 0u; t < TN; t++) acc[t] = 0.0;
    if (row < p.rows) {
        for (uint t = 0u; t < TN; t++) {
            uint token = tokenBase + t;
            if (token >= p.tokens) break;
            uint wBase = row * k;
            uint xBase = token * k;
            if (batch) {
                float a = 0.0;
                for (uint e = lane; e < k; e += 8u) a = fmaR(weight(wBase + e), activation(xBase + e), a);
                acc[t] = a;
            } else {
                float s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                for (uint i = 0u; i + 32u <= k; i += 32u) {
                    s0 = fmaR(weight(wBase + i + lane), activation(xBase + i + lane), s0);
                    s1 = fmaR(weight(wBase + i + 8u + lane), activation(xBase + i + 8u + lane), s1);
                    s2 = fmaR(weight(wBase + i + 16u + lane), activation(xBase + i + 16u + lane), s2);
                    s3 = fmaR(weight(wBase + i + 24u + lane), activation(xBase + i + 24u + lane), s3);
                }
                precise float a02 = s0 + s2;
                precise float a13 = s1 + s3;
                precise float a = a02 + a13;
                acc[t] = a;
            }
        }
    }
    for (uint t = 0u; t < TN; t++) lanes[t * WG + lid] = acc[t];
    barrier();
    if (lane == 0u && row < p.rows) {
        for (uint t = 0u; t < TN; t++) {
            uint token = tokenBase + t;
            if (token >= p.tokens) break;
            uint l = t * WG + lid;
            precise float v;
            if (batch) {
                v = hsumA(lanes[l], lanes[l + 1u], lanes[l + 2u], lanes[l + 3u], lanes[l + 4u], lanes[l + 5u], lanes[l + 6u], lanes[l + 7u]);
            } else {
                v = hsumB(lanes[l], lanes[l + 1u], lanes[l + 2u], lanes[l + 3u], lanes[l + 4u], lanes[l + 5u], lanes[l + 6u], lanes[l + 7u]);
            }
            if ((p.flags & 2u) != 0u) v = v + bias[p.rowBase + row];
            uint at = token * p.yStride + p.rowBase + row;
            if ((p.flags & 1u) != 0u) v = v + y[at];
            y[at] = v;
        }
    }
}
