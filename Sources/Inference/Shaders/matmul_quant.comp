#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#extension GL_EXT_control_flow_attributes : require
// y[t][rowBase + r] = (flags&1 ? y : 0) + (dot(W[r], X[t]) (+ bias)), quantized weights against
// 8-bit activation blocks (quantize.comp). WTYPE 1: Q4_1 (q*d + m); 2: Q4_0 ((q-8)*d); 3: Q8_0;
// 4: Q5_0 ((q-16)*d); 5: Q5_1 (q*d + m), the fifth bit of element j being bit j of the block's
// second scale word.
//
// The dot product is the reference's: eight lanes, lane j holding elements 4j..4j+3 of every
// block; per block lane j adds fma(dw*dx, sum of its four products, acc_j); the lanes are summed
// as hsum_float_8, then (Q4_1) the sum over blocks of fma(m, s). One invocation computes one
// row for TN tokens, each block's weights unpacked once for all of them. Lanes 0-3 and
// 4-7 are the components of two vec4 accumulators. Weights are stored block-major: block b of
// row r at b * rows + r.
//
// SPLIT > 1 (GPUs, the fast arithmetic only; split.glsl): SPLIT invocations share a row, each
// taking every SPLIT-th block, and their sums are added in a fixed order.
layout(local_size_x_id = 0, local_size_y_id = 3) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 2) const uint TN = 1;
layout(constant_id = 3) const uint SPLIT = 1;
layout(std430, binding = 0) readonly buffer WQ { uvec4 wq[]; };
layout(std430, binding = 1) readonly buffer WS { uint ws[]; };
layout(std430, binding = 2) readonly buffer XQ { uvec4 xq[]; };
layout(std430, binding = 3) readonly buffer XD { vec2 xd[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
layout(std430, binding = 5) readonly buffer B { float bias[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint rows; uint tokens; uint rowBase; uint yStride; uint flags; } p;

// Sum over the four bytes of each component: weights (unsigned nibbles or signed bytes) times
// signed activation bytes.
ivec4 dot4(ivec4 w0, ivec4 w1, ivec4 w2, ivec4 w3, uvec4 x) {
    ivec4 xv = ivec4(x);
    return w0 * bitfieldExtract(xv, 0, 8) + w1 * bitfieldExtract(xv, 8, 8) + w2 * bitfieldExtract(xv, 16, 8)
        + w3 * bitfieldExtract(xv, 24, 8);
}

#include "split.glsl"

void main() {
    uint row = gl_GlobalInvocationID.x;
    uint tokenBase = gl_WorkGroupID.y * TN;
    uint tokenCount = min(TN, p.tokens - tokenBase);
    vec4 accLo[TN];
    vec4 accHi[TN];
    float summs[TN];
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        accLo[t] = vec4(0.0);
        accHi[t] = vec4(0.0);
        summs[t] = 0.0;
    }
    uint blocks = row < p.rows ? p.blocksPerRow : 0u;
    for (uint b = gl_LocalInvocationID.y; b < blocks; b += SPLIT) {
        uint wb = b * p.rows + row;
#if WTYPE >= 4
        vec2 dm = unpackHalf2x16(ws[wb * 2u]);
        uint qh = ws[wb * 2u + 1u];
#else
        vec2 dm = unpackHalf2x16(ws[wb]);
#endif
#if WTYPE == 3
        ivec4 a = ivec4(wq[wb * 2u]);
        ivec4 c = ivec4(wq[wb * 2u + 1u]);
        ivec4 l0 = bitfieldExtract(a, 0, 8), l1 = bitfieldExtract(a, 8, 8), l2 = bitfieldExtract(a, 16, 8), l3 = bitfieldExtract(a, 24, 8);
        ivec4 h0 = bitfieldExtract(c, 0, 8), h1 = bitfieldExtract(c, 8, 8), h2 = bitfieldExtract(c, 16, 8), h3 = bitfieldExtract(c, 24, 8);
#else
        uvec4 w = wq[wb];
#if WTYPE == 2
        const ivec4 off = ivec4(8);
#elif WTYPE == 4
        const ivec4 off = ivec4(16);
#else
        const ivec4 off = ivec4(0);
#endif
        ivec4 l0 = ivec4(w & 0xFu) - off, l1 = ivec4((w >> 8) & 0xFu) - off, l2 = ivec4((w >> 16) & 0xFu) - off, l3 = ivec4((w >> 24) & 0xFu) - off;
        ivec4 h0 = ivec4((w >> 4) & 0xFu) - off, h1 = ivec4((w >> 12) & 0xFu) - off, h2 = ivec4((w >> 20) & 0xFu) - off, h3 = ivec4((w >> 28) & 0xFu) - off;
#if WTYPE >= 4
        // Component c of l_i is element 4c+i, of h_i element 16+4c+i.
        const uvec4 at = uvec4(0u, 4u, 8u, 12u);
        l0 += ivec4(((uvec4(qh) >> at) & 1u) << 4); l1 += ivec4(((uvec4(qh) >> (at + 1u)) & 1u) << 4);
        l2 += ivec4(((uvec4(qh) >> (at + 2u)) & 1u) << 4); l3 += ivec4(((uvec4(qh) >> (at + 3u)) & 1u) << 4);
        h0 += ivec4(((uvec4(qh) >> (at + 16u)) & 1u) << 4); h1 += ivec4(((uvec4(qh) >> (at + 17u)) & 1u) << 4);
        h2 += ivec4(((uvec4(qh) >> (at + 18u)) & 1u) << 4); h3 += ivec4(((uvec4(qh) >> (at + 19u)) & 1u) << 4);
#endif
#endif
        [[unroll]] for (uint t = 0u; t < TN; t++) {
            if (t < tokenCount) {
                uint xb = (tokenBase + t) * p.blocksPerRow + b;
                vec2 xs = xd[xb];
                precise float d0d1 = dm.x * xs.x;
                ivec4 lo = dot4(l0, l1, l2, l3, xq[xb * 2u]);
                ivec4 hi = dot4(h0, h1, h2, h3, xq[xb * 2u + 1u]);
                accLo[t] = fmaR4(vec4(d0d1), vec4(lo), accLo[t]);
                accHi[t] = fmaR4(vec4(d0d1), vec4(hi), accHi[t]);
#if WTYPE == 1 || WTYPE == 5
                summs[t] = fmaR(dm.y, xs.y, summs[t]);
#endif
            }
        }
    }
    float sums[TN];
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        precise float v = hsumA(accLo[t].x, accLo[t].y, accLo[t].z, accLo[t].w, accHi[t].x, accHi[t].y, accHi[t].z, accHi[t].w);
#if WTYPE == 1 || WTYPE == 5
        v = v + summs[t];
#endif
        sums[t] = v;
    }
    if (!combineSlices(sums) || row >= p.rows) return;
    storeRow(sums, row, tokenBase, tokenCount);
}
