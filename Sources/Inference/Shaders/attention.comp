#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Causal attention for one head of one token per workgroup, as the reference computes it:
// scores = dot(half(q), k) * scale over positions 0..start+t, exp by the reference's
// exponential, the sum over groups of eight (each summed as hsum_float_8) in double,
// probabilities p = half(e * float(1/sum)), then the dot of p with v per dimension.
// The two dot products follow the reference's prompt kernel (flags&4: eight lanes, hsum_float_8)
// or its one-token kernel (four accumulators of eight lanes over steps of 32, hadd reduce).
// WG is 64 for the reference's order; with VSLICE (GPUs) it is wider and the product with v is
// split among position slices (below). Scores live in a scratch row of `ctx` floats per (token, head). Row t attends to positions
// 0..rowInfo[t].y-1 of the cache region starting at position rowInfo[t].x (its sequence's slot).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WG = 64;
// 1: split the product with v among position slices (GPUs, the fast kernels only).
layout(constant_id = 1) const uint VSLICE = 0;
layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) buffer S { float scores[]; };
layout(std430, binding = 4) writeonly buffer O { float outv[]; };
layout(std430, binding = 5) readonly buffer R { uvec2 rowInfo[]; };
layout(push_constant) uniform P { uint headDim; uint heads; uint kvHeads; uint ctx; float scale; uint flags; } p;
shared float qh[512];
shared float red[WG];
#ifdef HAS_F64
shared double sumRed[WG];
#else
shared float sumRed[WG];
#endif

float kAt(uint e) {
    vec2 pair = unpackHalf2x16(kc[e / 2u]);
    return (e & 1u) != 0u ? pair.y : pair.x;
}

float vAt(uint e) {
    vec2 pair = unpackHalf2x16(vc[e / 2u]);
    return (e & 1u) != 0u ? pair.y : pair.x;
}

void main() {
    uint h = gl_WorkGroupID.x;
    uint t = gl_WorkGroupID.y;
    uint lid = gl_LocalInvocationID.x;
    uint hd = p.headDim;
    bool batch = (p.flags & 4u) != 0u;
    uint kvh = h / (p.heads / p.kvHeads);
    uint kvDim = p.kvHeads * hd;
    uint qBase = (t * p.heads + h) * hd;
    for (uint d = lid; d < hd; d += WG) qh[d] = roundHalf(q[qBase + d]);
    barrier();
    uint base = rowInfo[t].x;
    uint n = rowInfo[t].y;
    uint sBase = (t * p.heads + h) * p.ctx;
    float mx = -1.0 / 0.0;
    for (uint pos = lid; pos < n; pos += WG) {
        uint kBase = (base + pos) * kvDim + kvh * hd;
        float a[8];
        for (uint l = 0u; l < 8u; l++) a[l] = 0.0;
        float dot;
        if (batch) {
            for (uint d = 0u; d < hd; d++) a[d % 8u] = fmaR(qh[d], kAt(kBase + d), a[d % 8u]);
            dot = hsumA(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        } else {
            float b[8], c[8], e[8];
            for (uint l = 0u; l < 8u; l++) { b[l] = 0.0; c[l] = 0.0; e[l] = 0.0; }
            uint whole = hd & ~31u;
            for (uint i = 0u; i < whole; i += 32u) {
                for (uint l = 0u; l < 8u; l++) {
                    a[l] = fmaR(qh[i + l], kAt(kBase + i + l), a[l]);
                    b[l] = fmaR(qh[i + 8u + l], kAt(kBase + i + 8u + l), b[l]);
                    c[l] = fmaR(qh[i + 16u + l], kAt(kBase + i + 16u + l), c[l]);
                    e[l] = fmaR(qh[i + 24u + l], kAt(kBase + i + 24u + l), e[l]);
                }
            }
            for (uint l = 0u; l < 8u; l++) {
                precise float ac = a[l] + c[l];
                precise float be = b[l] + e[l];
                precise float all = ac + be;
                a[l] = all;
            }
            dot = hsumB(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
#ifdef HAS_F64
            if (whole < hd) {
                double tail = double(dot);
                for (uint d = whole; d < hd; d++) {
                    precise float prod = qh[d] * kAt(kBase + d);
                    tail += double(prod);
                }
                dot = roundToFloat(tail);
            }
#else
            for (uint d = whole; d < hd; d++) dot += qh[d] * kAt(kBase + d);
#endif
        }
        precise float s = dot * p.scale;
        scores[sBase + pos] = s;
        mx = max(mx, s);
    }
    red[lid] = mx;
    barrier();
    for (uint o = WG / 2u; o > 0u; o >>= 1) {
        if (lid < o) red[lid] = max(red[lid], red[lid + o]);
        barrier();
    }
    mx = red[0];
    for (uint pos = lid; pos < n; pos += WG) {
        precise float shifted = scores[sBase + pos] - mx;
        scores[sBase + pos] = refExp(shifted);
    }
    memoryBarrierBuffer();
    barrier();
    // Sum per group of eight positions (positions past n count as zero), groups in double.
    uint groups = (n + 7u) / 8u;
#ifdef HAS_F64
    double sum = 0.0;
#else
    float sum = 0.0;
#endif
    for (uint g = lid; g < groups; g += WG) {
        float v[8];
        for (uint l = 0u; l < 8u; l++) v[l] = g * 8u + l < n ? scores[sBase + g * 8u + l] : 0.0;
        sum += hsumA(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    }
    sumRed[lid] = sum;
    barrier();
    for (uint o = WG / 2u; o > 0u; o >>= 1) {
        if (lid < o) sumRed[lid] += sumRed[lid + o];
        barrier();
    }
#ifdef HAS_F64
    float inv = roundToFloat(1.0 / sumRed[0]);
#else
    float inv = 1.0 / sumRed[0];
#endif
    memoryBarrierBuffer();
    barrier();
    for (uint pos = lid; pos < n; pos += WG) {
        precise float prob = scores[sBase + pos] * inv;
        scores[sBase + pos] = roundHalf(prob);
    }
    memoryBarrierBuffer();
    barrier();
    // The product with v: one slice (the reference's order) unless VSLICE; then invocation lid
    // takes dimension lid % hd of position slice lid / hd (runs of 32 positions dealt to the
    // slices in turn) and the slices' sums are added in slice order, so the result depends on
    // WG and hd alone.
    uint slices = VSLICE != 0u && WG >= hd ? WG / hd : 1u;
    uint slice = lid / hd;
    float result = 0.0;
    for (uint d = lid % hd; d < hd && slice < slices; d += WG) {
        uint vOffset = base * kvDim + kvh * hd + d;
        float a[8];
        for (uint l = 0u; l < 8u; l++) a[l] = 0.0;
        if (batch) {
            for (uint pos = slice * 32u; pos < n; pos += (pos % 32u == 31u) ? 32u * (slices - 1u) + 1u : 1u) a[pos % 8u] = fmaR(scores[sBase + pos], vAt(pos * kvDim + vOffset), a[pos % 8u]);
            result = hsumA(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        } else {
            float b[8], c[8], e[8];
            for (uint l = 0u; l < 8u; l++) { b[l] = 0.0; c[l] = 0.0; e[l] = 0.0; }
            for (uint pos = slice * 32u; pos < n; pos += (pos % 32u == 31u) ? 32u * (slices - 1u) + 1u : 1u) {
                float prod = scores[sBase + pos];
                float vv = vAt(pos * kvDim + vOffset);
                uint l = pos % 8u;
                uint which = (pos / 8u) % 4u;
                if (which == 0u) a[l] = fmaR(prod, vv, a[l]);
                else if (which == 1u) b[l] = fmaR(prod, vv, b[l]);
                else if (which == 2u) c[l] = fmaR(prod, vv, c[l]);
                else e[l] = fmaR(prod, vv, e[l]);
            }
            for (uint l = 0u; l < 8u; l++) {
                precise float ac = a[l] + c[l];
                precise float be = b[l] + e[l];
                precise float all = ac + be;
                a[l] = all;
            }
            result = hsumB(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
        }
        if (slices == 1u) outv[qBase + d] = result;
    }
    if (slices == 1u) return;
    red[lid] = result;
    barrier();
    if (lid < hd) {
        precise float total = red[lid];
        for (uint k = 1u; k < slices; k++) total = total + red[k * hd + lid];
        outv[qBase + lid] = total;
    }
}
