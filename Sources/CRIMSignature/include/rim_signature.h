#ifndef CCGATE_RIM_SIGNATURE_H
#define CCGATE_RIM_SIGNATURE_H

#include <stddef.h>
#include <stdint.h>

/// Reads one NVIDIA reference integrity manifest (a TCG RIM / SWID tag with an enveloped
/// XML-DSig signature) and verifies its signature with libxmlsec1 under `root_pem` (the only
/// trusted certificate) at `when` (seconds since 1970; must be positive).
///
/// On success (return 0) `out` holds `*out_len` bytes of tab-separated lines, every value read
/// from the one parsed document whose signature was checked:
///
///     signature <0 valid | 1 invalid (digest or signature) | 2 unverifiable (no key, chain, time)> <text>
///     name <SoftwareIdentity name>
///     version <Meta colloquialVersion>
///     cert <base64 of a ds:X509Certificate, in document order>
///     m <index> <active> <alternatives> <size> <Hash0> <Hash1> ...
///
/// Returns -1 when the text is not a manifest of that shape (its reason in `message`), -2 when
/// `out` is too small.
int ccgate_rim_read(
    const uint8_t *xml, size_t xml_len, const uint8_t *root_pem, size_t root_len, int64_t when,
    char *out, size_t out_cap, size_t *out_len, char *message, size_t message_cap);

#endif
