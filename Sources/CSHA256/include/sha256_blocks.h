#ifndef GPT2DIST_SHA256_BLOCKS_H
#define GPT2DIST_SHA256_BLOCKS_H
#include <stddef.h>
#include <stdint.h>

/// FIPS 180-4's 64 round constants (also used by the portable Swift path).
extern const uint32_t gpt2dist_sha256_round_constants[64];

/// 1 when this CPU has the SHA extensions (SHA-NI) with SSSE3 and SSE4.1, else 0.
int gpt2dist_sha256_hardware_available(void);

/// SHA-256 compression of `blocks` 64-byte blocks into `state` (a, b, ..., h) with SHA-NI; call only when
/// gpt2dist_sha256_hardware_available() is 1.
void gpt2dist_sha256_hardware_blocks(uint32_t state[8], const uint8_t *data, size_t blocks);

#endif
