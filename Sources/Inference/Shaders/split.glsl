// Split reduction for the quantized matmuls: with SPLIT > 1 a workgroup holds WG rows times
// SPLIT slices (local y), slice s summing the blocks s, s + SPLIT, ... of its row. The slices'
// sums meet in shared memory and slice 0 adds them in slice order, so the result depends on
// SPLIT alone, never on scheduling: the same device and SPLIT give the same bits on every run
// and for every batch composition. Needs WG, TN, SPLIT, the push constants p and the buffers y
// and bias declared first.
shared float slicePartial[SPLIT > 1u ? WG * SPLIT * TN : 1u];

// Replaces sums[] by the total over the slices; true for the invocation that writes the row.
bool combineSlices(inout float sums[TN]) {
    if (SPLIT == 1u) return true;
    uint x = gl_LocalInvocationID.x;
    uint s = gl_LocalInvocationID.y;
    [[unroll]] for (uint t = 0u; t < TN; t++) slicePartial[(t * SPLIT + s) * WG + x] = sums[t];
    barrier();
    if (s != 0u) return false;
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        precise float v = slicePartial[t * SPLIT * WG + x];
        for (uint k = 1u; k < SPLIT; k++) v = v + slicePartial[(t * SPLIT + k) * WG + x];
        sums[t] = v;
    }
    return true;
}

// y[token][rowBase + row] = sums[t] (+ bias if flags&2) (+ the old y if flags&1).
void storeRow(float sums[TN], uint row, uint tokenBase, uint tokenCount) {
    [[unroll]] for (uint t = 0u; t < TN; t++) {
        if (t < tokenCount) {
            precise float v = sums[t];
            if ((p.flags & 2u) != 0u) v = v + bias[p.rowBase + row];
            uint at = (tokenBase + t) * p.yStride + p.rowBase + row;
            if ((p.flags & 1u) != 0u) v = v + y[at];
            y[at] = v;
        }
    }
}
