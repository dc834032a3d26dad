#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
// Rotary position embedding, in place on q and k, from a table of (cos, sin) per token and
// dimension pair made on the host. neox: pairs (i, i + dims/2); otherwise (2i, 2i+1).
// x0' = fmaR(x0, cos, -(x1 * sin)), x1' = fmaR(x0, sin, x1 * cos), as the reference computes.
layout(local_size_x = 64) in;
layout(std430, binding = 0) buffer Q { float q[]; };
layout(std430, binding = 1) buffer K { float k[]; };
layout(std430, binding = 2) readonly buffer T { vec2 table[]; };
layout(push_constant) uniform P { uint tokens; uint qHeads; uint kHeads; uint headDim; uint ropeDims; uint neox; } p;

void rotate(inout float x0, inout float x1, vec2 cs) {
    precise float x1s = x1 * cs.y;
    precise float x1c = x1 * cs.x;
    float a = fmaR(x0, cs.x, -x1s);
    float b = fmaR(x0, cs.y, x1c);
    x0 = a;
    x1 = b;
}

void main() {
    uint pairs = p.ropeDims / 2u;
    uint heads = p.qHeads + p.kHeads;
    uint id = gl_GlobalInvocationID.x;
    if (id >= p.tokens * heads * pairs) return;
    uint i = id % pairs;
    uint head = (id / pairs) % heads;
    uint t = id / (pairs * heads);
    vec2 cs = table[t * pairs + i];
    uint a = p.neox != 0u ? i : 2u * i;
    uint b = p.neox != 0u ? i + pairs : 2u * i + 1u;
    if (head < p.qHeads) {
        uint base = (t * p.qHeads + head) * p.headDim;
        float x0 = q[base + a];
        float x1 = q[base + b];
        rotate(x0, x1, cs);
        q[base + a] = x0;
        q[base + b] = x1;
    } else {
        uint base = (t * p.kHeads + (head - p.qHeads)) * p.headDim;
        float x0 = k[base + a];
        float x1 = k[base + b];
        rotate(x0, x1, cs);
        k[base + a] = x0;
        k[base + b] = x1;
    }
}
