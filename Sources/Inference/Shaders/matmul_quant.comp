#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// y[t][rowBase + r] = (flags&1 ? y : 0) + (dot(W[r], X[t]) (+ bias)), quantized weights against
// 8-bit activation blocks (quantize.comp). WTYPE 1: Q4_1 (q*d + m); 2: Q4_0 ((q-8)*d); 3: Q8_0.
//
// The dot product is the reference's: eight lanes, lane j holding elements 4j..4j+3 of every
// block; per block lane j adds fmaR(dw*dx, sum of its four products, acc_j); the lanes are summed
// as hsum_float_8, then (Q4_1) the sum over blocks of fmaR(m, s). Eight invocations compute the
// eight lanes of one row, so WG/8 rows per workgroup, TN tokens each.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 2) const uint TN = 1;
layout(std430, binding = 0) readonly buffer WQ { uint wq[]; };
layout(std430, binding = 1) readonly buffer WS { uint ws[]; };
layout(std430, binding = 2) readonly buffer XQ { uint xq[]; };
layout(std430, binding = 3) readonly buffer XD { vec2 xd[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
layout(std430, binding = 5) readonly buffer B { float bias[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint rows; uint tokens; uint rowBase; uint yStride; uint flags; } p;
shared float lanes[WG * TN];

#if WTYPE == 3
const uint WQ_WORDS = 8u;
#else
const uint WQ_WORDS = 4u;
#endif

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint lane = lid % 8u;
    uint row = gl_WorkGroupID.x * (WG / 8u) + lid / 8u;
    uint tokenBase = gl_WorkGroupID.y * TN;
    float acc[TN];
    float summs[TN];
    for (uint t = 0u; t < TN; t++) { acc[t] = 0.0; summs[t] = 0.0; }
    if (row < p.rows) {
#if WTYPE == 3
        uint wordIndex = lane;
        uint shift = 0u;
#else
        uint wordIndex = lane % 4u;
        uint shift = lane < 4u ? 0u : 4u;
#endif
        for (uint b = 0u; b < p.blocksPerRow; b++) {
            uint wb = row * p.blocksPerRow + b;
            vec2 dm = unpackHalf2x16(ws[wb]);
            uint word = wq[wb * WQ_WORDS + wordIndex];
            for (uint t = 0u; t < TN; t++) {
                uint token = tokenBase + t;
                if (token >= p.tokens) break;
                uint xb = token * p.blocksPerRow + b;
                int xv = int(xq[xb * 8u + lane]);
                int sumi = 0;
                for (uint k = 0u; k < 4u; k++) {
#if WTYPE == 3
                    int wv = bitfieldExtract(int(word), int(8u * k), 8);
#elif WTYPE == 2
                    int wv = int((word >> (8u * k + shift)) & 0xFu) - 8;
#else
                    int wv = int((word >> (8u * k + shift)) & 0xFu);
#endif
                    sumi += wv * bitfieldExtract(xv, int(8u * k), 8);
                }
                vec2 xs = xd[xb];
                precise float d0d1 = dm.x * xs.x;
                acc[t] = fmaR(d0d1, float(sumi), acc[t]);
#if WTYPE == 1
                if (lane == 0u) summs[t] = fmaR(dm.y, xs.y, summs[t]);
#endif
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
            precise float v = hsumA(lanes[l], lanes[l + 1u], lanes[l + 2u], lanes[l + 3u], lanes[l + 4u], lanes[l + 5u], lanes[l + 6u], lanes[l + 7u]);
#if WTYPE == 1
            v = v + summs[t];
#endif
            if ((p.flags & 2u) != 0u) v = v + bias[p.rowBase + row];
            uint at = token * p.yStride + p.rowBase + row;
            if ((p.flags & 1u) != 0u) v = v + y[at];
            y[at] = v;
        }
    }
}
