// Shared by every kernel.
//
// The kernels reproduce, operation for operation, the arithmetic of the reference CPU
// implementation (llama.cpp's ggml CPU backend, x86 AVX2/FMA build): the same roundings to
// half precision, the same activation quantization, the same grouping of partial sums and the
// same fused multiply-adds. Floating-point results depend on the order of operations; with the
// same order they are bit-identical, which is what makes greedy output comparable token for
// token. Variables marked `precise` must not be contracted into fused multiply-adds.
//
// With HAS_F64 (devices with shaderFloat64) divisions and square roots are correctly rounded
// and row sums are accumulated in double precision, as the reference does; without it they are
// ordinary single-precision operations.

#ifdef HAS_F64
#extension GL_ARB_gpu_shader_fp64 : enable
#endif

// f32 -> f16 bits, round to nearest even, in integer arithmetic so every device rounds alike.
uint halfBits(float x) {
    uint u = floatBitsToUint(x);
    uint sign = (u >> 16) & 0x8000u;
    uint a = u & 0x7FFFFFFFu;
    uint h;
    if (a >= 0x7F800000u) {
        h = a > 0x7F800000u ? 0x7E00u : 0x7C00u;
    } else if (a >= 0x477FF000u) {
        h = 0x7C00u;
    } else if (a >= 0x38800000u) {
        uint mant = a & 0x007FFFFFu;
        h = (((a >> 23) - 112u) << 10) | (mant >> 13);
        uint rest = mant & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0u)) h += 1u;
    } else {
        uint e = a >> 23;
        if (e == 0u) {
            h = 0u;
        } else {
            uint m = (a & 0x007FFFFFu) | 0x00800000u;
            uint shift = 126u - e;
            if (shift >= 32u) {
                h = 0u;
            } else {
                h = m >> shift;
                uint rest = m & ((1u << shift) - 1u);
                uint halfway = 1u << (shift - 1u);
                if (rest > halfway || (rest == halfway && (h & 1u) != 0u)) h += 1u;
            }
        }
    }
    return sign | h;
}

float roundHalf(float x) { return unpackHalf2x16(halfBits(x)).x; }

#ifdef HAS_F64
// a * b + c with a single rounding, also where the device splits fmaR() into a multiply and an
// add. The product is exact in double; the double sum is then correct unless it lies exactly
// on a float midpoint, where the exact remainder of the sum (TwoSum) decides the direction.
float fmaR(float a, float b, float c) {
    precise double p = double(a) * double(b);
    precise double s = p + double(c);
    if ((unpackDouble2x32(s).x & 0x1FFFFFFFu) != 0x10000000u) return float(s);
    precise double bb = s - p;
    precise double err = (p - (s - bb)) + (double(c) - bb);
    double m = abs(s);
    if (s < 0.0) err = -err;
    float t = float(m);
    float lo = double(t) < m ? t : uintBitsToFloat(floatBitsToUint(t) - 1u);
    float hi = double(t) < m ? uintBitsToFloat(floatBitsToUint(t) + 1u) : t;
    float r = err > 0.0 ? hi : (err < 0.0 ? lo : ((floatBitsToUint(lo) & 1u) == 0u ? lo : hi));
    return s < 0.0 ? -r : r;
}
vec4 fmaR4(vec4 a, vec4 b, vec4 c) {
    precise dvec4 p = dvec4(a) * dvec4(b);
    precise dvec4 s = p + dvec4(c);
    vec4 r = vec4(s);
    uvec4 low = uvec4(unpackDouble2x32(s.x).x, unpackDouble2x32(s.y).x, unpackDouble2x32(s.z).x, unpackDouble2x32(s.w).x);
    if (all(notEqual(low & 0x1FFFFFFFu, uvec4(0x10000000u)))) return r;
    return vec4(fmaR(a.x, b.x, c.x), fmaR(a.y, b.y, c.y), fmaR(a.z, b.z, c.z), fmaR(a.w, b.w, c.w));
}
#else
float fmaR(float a, float b, float c) { return fma(a, b, c); }
vec4 fmaR4(vec4 a, vec4 b, vec4 c) { return fma(a, b, c); }
#endif

#ifdef HAS_F64
// The float nearest to x (ties to even), independent of how the device converts.
float roundToFloat(double x) {
    float f = float(x);
    float lo = uintBitsToFloat(floatBitsToUint(f) - 1u);
    float hi = uintBitsToFloat(floatBitsToUint(f) + 1u);
    if (f == 0.0) return f;
    double ef = abs(double(f) - x), el = abs(double(lo) - x), eh = abs(double(hi) - x);
    if (el < ef || (el == ef && (floatBitsToUint(lo) & 1u) == 0u)) return lo;
    if (eh < ef || (eh == ef && (floatBitsToUint(hi) & 1u) == 0u)) return hi;
    return f;
}

// a / b correctly rounded (b finite and non-zero): the candidate with the smallest exact
// remainder a - q*b (exact in double, since q*b has at most 48 significant bits).
float divExact(float a, float b) {
    if (a == 0.0) return a / b;
    float q = float(double(a) / double(b));
    float best = q;
    double da = double(a), db = double(b);
    double err = abs(da - double(q) * db);
    for (int s = -1; s <= 1; s += 2) {
        float c = uintBitsToFloat(uint(int(floatBitsToUint(q)) + s));
        double e = abs(da - double(c) * db);
        if (e < err || (e == err && (floatBitsToUint(c) & 1u) == 0u)) { best = c; err = e; }
    }
    return best;
}

// sqrt(m) correctly rounded (m > 0): the candidate whose square is nearest m.
float sqrtExact(float m) {
    float r = float(sqrt(double(m)));
    float best = r;
    double dm = double(m);
    double err = abs(double(r) * double(r) - dm);
    for (int s = -1; s <= 1; s += 2) {
        float c = uintBitsToFloat(uint(int(floatBitsToUint(r)) + s));
        double e = abs(double(c) * double(c) - dm);
        if (e < err) { best = c; err = e; }
    }
    return best;
}
#else
float divExact(float a, float b) { return a / b; }
float sqrtExact(float m) { return sqrt(m); }
#endif

// exp(x) exactly as the reference's vectorized single-precision exponential computes it.
float refExp(float x) {
    const float SHIFT = uintBitsToFloat(0x4b400000u);
    precise float z = fmaR(x, uintBitsToFloat(0x3fb8aa3bu), SHIFT);
    precise float n = z - SHIFT;
    precise float b = fmaR(-n, uintBitsToFloat(0x35bfbe8eu), fmaR(-n, uintBitsToFloat(0x3f317200u), x));
    uint e = floatBitsToUint(z) << 23;
    float k = uintBitsToFloat(e + 0x3f800000u);
    precise float u = b * b;
    precise float c5b = uintBitsToFloat(0x3f7ffff6u) * b;
    precise float j = fmaR(fmaR(fmaR(uintBitsToFloat(0x3c072010u), b, uintBitsToFloat(0x3d2b9f17u)), u,
                              fmaR(uintBitsToFloat(0x3e2aaf33u), b, uintBitsToFloat(0x3efffedbu))), u, c5b);
    if (!(abs(n) > 126.0)) return fmaR(j, k, k);
    uint g = n <= 0.0 ? 0x82000000u : 0u;
    float s1 = uintBitsToFloat(g + 0x7f000000u);
    float s2 = uintBitsToFloat(e - g);
    precise float big = s1 * s1;
    if (abs(n) > 192.0) return big;
    precise float r = fmaR(s2, j, s2) * s1;
    return r;
}

// Horizontal sum of eight lanes as the reference's hsum_float_8: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
float hsumA(float a0, float a1, float a2, float a3, float a4, float a5, float a6, float a7) {
    precise float r0 = a0 + a4;
    precise float r1 = a1 + a5;
    precise float r2 = a2 + a6;
    precise float r3 = a3 + a7;
    precise float t0 = r0 + r2;
    precise float t1 = r1 + r3;
    precise float s = t0 + t1;
    return s;
}

// Horizontal sum as the reference's F32x8 reduce (hadd): ((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7)).
float hsumB(float a0, float a1, float a2, float a3, float a4, float a5, float a6, float a7) {
    precise float r0 = a0 + a4;
    precise float r1 = a1 + a5;
    precise float r2 = a2 + a6;
    precise float r3 = a3 + a7;
    precise float t0 = r0 + r1;
    precise float t1 = r2 + r3;
    precise float s = t0 + t1;
    return s;
}
