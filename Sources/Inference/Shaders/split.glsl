// Split reduction for the quantized matmuls: with SPLIT > 1 a workgroup holds WG rows times
// SPLIT slices (local y), slice s summing the blocks s, s + SPLIT, ... of its row. The slices'
// sums meet in shared memory and slice 0 adds them in slice order, so the result depends on
// SPLIT alone, never on scheduling: the same device and SPLIT give the same bits on every run
// and for every batch composition. Needs WG, TN and SPLIT declared and tokens counted from 0.
shared float slicePartial[SPLIT > 1u ? WG * SPLIT * TN : 1u];

// Replaces sums[] by the total over the slices; true for the invocation that writes the row.
bool combineSlices(inout float sums[TN]) {
    if (SPLIT == 1u) return true;
    uint x = gl_LocalInvocationID.x;
    uint s = gl_LocalInvocationID.y;
    [[unroll]] for (uint t = 0u; t < TN; t++) slicePartial[(s * WG + x) * TN + t] = sums[t];
    barrier();
    if (s != 0u) return false;
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        precise float v = slicePartial[x * TN + t];
        for (uint k = 1u; k < SPLIT; k++) v = v + slicePartial[(k * WG + x) * TN + t];
        sums[t] = v;
    }
    return true;
}
