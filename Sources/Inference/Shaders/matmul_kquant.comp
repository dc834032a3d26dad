#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#extension GL_EXT_control_flow_attributes : require
// y[t][rowBase + r] = (flags&1 ? y : 0) + dot(W[r], X[t]) (+ bias) for K-quant weights against
// Q8_K activations (quantize_q8k.comp). KTYPE 1: Q4_K; 2: Q5_K; 3: Q6_K.
//
// Dequantization is fused into the product: the weights stay in their GGML super-blocks (WORDS
// words each, block-major: super-block b of row r at b * rows + r, so neighbouring invocations
// read neighbouring blocks), and each word of quants is unpacked once for the TN tokens of the
// tile. The arithmetic is the reference's (ggml_vec_dot_q{4,5,6}_K_q8_K, x86 AVX2): within a
// super-block, eight exact integer lanes, lane w summing scale * quant * activation over the
// elements 4w..4w+3 of every 32-element chunk (Q6_K: its offset of 32 subtracted per lane from
// the activation sums of chunk w); per super-block each lane adds fma(d, lane, acc_w); the lanes
// are summed as hsum_float_8. The minimum terms: Q4_K four lanes, lane j adding fma(dmin, the
// mins of chunk j times its activation sums, ...), summed (m0+m2)+(m1+m3); Q5_K one scalar.
// One invocation computes one row for TN tokens; with SPLIT > 1 (GPUs, the fast arithmetic
// only) SPLIT invocations share a row, each taking every SPLIT-th super-block (split.glsl).
layout(local_size_x_id = 0, local_size_y_id = 3) in;
layout(constant_id = 0) const uint WG = 64;
layout(constant_id = 2) const uint TN = 1;
layout(constant_id = 3) const uint SPLIT = 1;
layout(std430, binding = 0) readonly buffer WQ { uint wq[]; };
layout(std430, binding = 1) readonly buffer WS { uint unused[]; };
layout(std430, binding = 2) readonly buffer XQ { uint xq[]; };
layout(std430, binding = 3) readonly buffer XD { float xd[]; };
layout(std430, binding = 4) buffer Y { float y[]; };
layout(std430, binding = 5) readonly buffer B { float bias[]; };
layout(push_constant) uniform P { uint blocksPerRow; uint rows; uint tokens; uint rowBase; uint yStride; uint flags; } p;

#if KTYPE == 1
const uint WORDS = 36u;
#elif KTYPE == 2
const uint WORDS = 44u;
#else
const uint WORDS = 53u;
#endif

ivec4 bytesOf(uint w) { return ivec4(bitfieldExtract(int(w), 0, 8), bitfieldExtract(int(w), 8, 8), bitfieldExtract(int(w), 16, 8), bitfieldExtract(int(w), 24, 8)); }
int dotI(ivec4 a, ivec4 b) { ivec4 m = a * b; return (m.x + m.y) + (m.z + m.w); }
int sumI(ivec4 a) { return (a.x + a.y) + (a.z + a.w); }
uint byteAt(uint base, uint i) { return (wq[base + i / 4u] >> (8u * (i % 4u))) & 0xFFu; }

#include "split.glsl"

void main() {
    uint row = gl_GlobalInvocationID.x;
    uint tokenBase = gl_WorkGroupID.y * TN;
    uint tokenCount = min(TN, p.tokens - tokenBase);
    vec4 accA[TN];
    vec4 accB[TN];
    vec4 accM[TN];
    ivec4 lanesA[TN];
    ivec4 lanesB[TN];
    ivec4 extra[TN];
    [[unroll]] for (uint t = 0u; t < TN; t++) { accA[t] = vec4(0.0); accB[t] = vec4(0.0); accM[t] = vec4(0.0); }
    const uvec4 shifts = uvec4(0u, 8u, 16u, 24u);
    uint blocks = row < p.rows ? p.blocksPerRow : 0u;
    for (uint b = gl_LocalInvocationID.y; b < blocks; b += SPLIT) {
        uint base = (b * p.rows + row) * WORDS;
        [[unroll]] for (uint t = 0u; t < TN; t++) { lanesA[t] = ivec4(0); lanesB[t] = ivec4(0); extra[t] = ivec4(0); }
#if KTYPE == 1 || KTYPE == 2
        vec2 dm = unpackHalf2x16(wq[base]);
        // 6-bit scales and mins of the eight sub-blocks, as ggml's get_scale_min_k4 unpacks them.
        uint sc[8];
        uint mn[8];
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            sc[j] = byteAt(base, 4u + j) & 63u;
            mn[j] = byteAt(base, 8u + j) & 63u;
            sc[j + 4u] = (byteAt(base, 12u + j) & 0xFu) | ((byteAt(base, 4u + j) >> 6) << 4);
            mn[j + 4u] = (byteAt(base, 12u + j) >> 4) | ((byteAt(base, 8u + j) >> 6) << 4);
        }
#if KTYPE == 1
        const uint QS = 4u;
#else
        const uint QS = 12u;
#endif
        [[unroll]] for (uint c = 0u; c < 4u; c++) {
            ivec4 lo[8];
            ivec4 hi[8];
            [[unroll]] for (uint w = 0u; w < 8u; w++) {
                uvec4 q = uvec4(wq[base + QS + c * 8u + w]) >> shifts;
                lo[w] = ivec4(q & 0xFu);
                hi[w] = ivec4((q >> 4) & 0xFu);
#if KTYPE == 2
                uvec4 h = uvec4(wq[base + 4u + w]) >> shifts;
                lo[w] += ivec4(((h >> (2u * c)) & 1u) << 4);
                hi[w] += ivec4(((h >> (2u * c + 1u)) & 1u) << 4);
#endif
            }
            int scLo = int(sc[2u * c]), scHi = int(sc[2u * c + 1u]);
            int mnLo = int(mn[2u * c]), mnHi = int(mn[2u * c + 1u]);
            [[unroll]] for (uint t = 0u; t < TN; t++) {
                if (t < tokenCount) {
                    uint xb = ((tokenBase + t) * p.blocksPerRow + b) * 64u + c * 16u;
                    int sl = 0, sh = 0;
                    int v[8];
                    [[unroll]] for (uint w = 0u; w < 8u; w++) {
                        ivec4 xl = bytesOf(xq[xb + w]);
                        ivec4 xh = bytesOf(xq[xb + 8u + w]);
                        v[w] = scLo * dotI(lo[w], xl) + scHi * dotI(hi[w], xh);
                        sl += sumI(xl);
                        sh += sumI(xh);
                    }
                    lanesA[t] += ivec4(v[0], v[1], v[2], v[3]);
                    lanesB[t] += ivec4(v[4], v[5], v[6], v[7]);
                    extra[t][c] = mnLo * sl + mnHi * sh;
                }
            }
        }
        [[unroll]] for (uint t = 0u; t < TN; t++) {
            if (t < tokenCount) {
                float dy = xd[(tokenBase + t) * p.blocksPerRow + b];
                precise float d = dy * dm.x;
                precise float dmin = -dy * dm.y;
                accA[t] = fmaR4(vec4(d), vec4(lanesA[t]), accA[t]);
                accB[t] = fmaR4(vec4(d), vec4(lanesB[t]), accB[t]);
#if KTYPE == 1
                accM[t] = fmaR4(vec4(dmin), vec4(extra[t]), accM[t]);
#else
                int total = extra[t].x + extra[t].y + extra[t].z + extra[t].w;
                accM[t].x = fmaR(dmin, float(total), accM[t].x);
#endif
            }
        }
#else
        float dx = unpackHalf2x16(wq[base + 52u]).x;
        [[unroll]] for (uint n = 0u; n < 2u; n++) {
            ivec4 glo[TN];
            ivec4 ghi[TN];
            [[unroll]] for (uint t = 0u; t < TN; t++) { glo[t] = ivec4(0); ghi[t] = ivec4(0); }
            [[unroll]] for (uint w = 0u; w < 8u; w++) {
                uvec4 a = uvec4(wq[base + n * 16u + w]) >> shifts;
                uvec4 bq = uvec4(wq[base + n * 16u + 8u + w]) >> shifts;
                uvec4 h = uvec4(wq[base + 32u + n * 8u + w]) >> shifts;
                ivec4 q1 = ivec4((a & 0xFu) | ((h & 3u) << 4));
                ivec4 q2 = ivec4((bq & 0xFu) | (((h >> 2) & 3u) << 4));
                ivec4 q3 = ivec4(((a >> 4) & 0xFu) | (((h >> 4) & 3u) << 4));
                ivec4 q4 = ivec4(((bq >> 4) & 0xFu) | (((h >> 6) & 3u) << 4));
                uint is = n * 8u + w / 4u;
                int s1 = bitfieldExtract(int(byteAt(base, 192u + is)), 0, 8);
                int s2 = bitfieldExtract(int(byteAt(base, 192u + is + 2u)), 0, 8);
                int s3 = bitfieldExtract(int(byteAt(base, 192u + is + 4u)), 0, 8);
                int s4 = bitfieldExtract(int(byteAt(base, 192u + is + 6u)), 0, 8);
                [[unroll]] for (uint t = 0u; t < TN; t++) {
                    if (t < tokenCount) {
                        uint xb = ((tokenBase + t) * p.blocksPerRow + b) * 64u + n * 32u + w;
                        ivec4 x1 = bytesOf(xq[xb]), x2 = bytesOf(xq[xb + 8u]);
                        ivec4 x3 = bytesOf(xq[xb + 16u]), x4 = bytesOf(xq[xb + 24u]);
                        int v = s1 * dotI(q1, x1) + s2 * dotI(q2, x2) + s3 * dotI(q3, x3) + s4 * dotI(q4, x4);
                        if (w < 4u) lanesA[t][w] += v; else lanesB[t][w - 4u] += v;
                        ivec4 sums = ivec4(sumI(x1), sumI(x2), sumI(x3), sumI(x4));
                        if (w < 4u) glo[t] += sums; else ghi[t] += sums;
                    }
                }
            }
            // Lane 4n+k: 32 * (the scales of chunk k's halves times their activation sums).
            ivec4 scA, scB;
            [[unroll]] for (uint k = 0u; k < 4u; k++) {
                scA[k] = bitfieldExtract(int(byteAt(base, 192u + n * 8u + 2u * k)), 0, 8);
                scB[k] = bitfieldExtract(int(byteAt(base, 192u + n * 8u + 2u * k + 1u)), 0, 8);
            }
            [[unroll]] for (uint t = 0u; t < TN; t++) {
                ivec4 sub = (scA * glo[t] + scB * ghi[t]) << 5;
                if (n == 0u) lanesA[t] -= sub; else lanesB[t] -= sub;
            }
        }
        [[unroll]] for (uint t = 0u; t < TN; t++) {
            if (t < tokenCount) {
                precise float d = xd[(tokenBase + t) * p.blocksPerRow + b] * dx;
                accA[t] = fmaR4(vec4(d), vec4(lanesA[t]), accA[t]);
                accB[t] = fmaR4(vec4(d), vec4(lanesB[t]), accB[t]);
            }
        }
#endif
    }
    float sums[TN];
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        precise float v = hsumA(accA[t].x, accA[t].y, accA[t].z, accA[t].w, accB[t].x, accB[t].y, accB[t].z, accB[t].w);
#if KTYPE == 1
        precise float m02 = accM[t].x + accM[t].z;
        precise float m13 = accM[t].y + accM[t].w;
        precise float m = m02 + m13;
        v = v + m;
#elif KTYPE == 2
        v = v + accM[t].x;
#endif
        sums[t] = v;
    }
    if (!combineSlices(sums) || row >= p.rows) return;
    storeRow(sums, row, tokenBase, tokenCount);
}
