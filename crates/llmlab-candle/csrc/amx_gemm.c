/*
 * Matrix products on Intel AMX tiles (AMX-BF16) for llmlab-candle's BERT
 * encoder. The Rust side (src/encoder/amx.rs) calls these only after
 * llmlab_amx_init() answered 1, and only through its safe wrappers, which
 * check every buffer size stated below.
 *
 * Precision. A float is split into two bf16 parts, x = hi + lo, which
 * together keep 16 of its 24 significant bits. With `split` set, a product
 * sums three tile products (hi*hi + hi*lo + lo*hi; lo*lo is below the
 * rounding of the sum) in fp32: within ~1e-6 of an fp32 product relative to
 * sum|a*w|. Without it, only hi*hi runs: plain bf16, three times faster.
 *
 * Layouts (T = 16 rows, K = 32 bf16 = one 64-byte tile row):
 *  - activations, "row tiles": rows are grouped by 16 and padded with zero
 *    rows to a multiple of 32; each group stores its k_pad/32 tiles one
 *    after the other, each tile 16 rows x 32 values. A group of 16 rows
 *    therefore takes 16 * k_pad values and its K sweep is contiguous.
 *  - weights W[n][k] (a PyTorch Linear weight, out x in), packed once into
 *    "pair tiles": columns (n) grouped by 16, padded to a multiple of 32;
 *    tile (group, kb) row r holds, for each of the 16 columns j, the pair
 *    W[j][kb*32 + 2r], W[j][kb*32 + 2r + 1], which is how tdpbf16ps reads
 *    its second operand.
 *  - output: row-major fp32, m x n, `ldc` floats apart.
 *
 * Convolutions (llmlab_amx_pack_conv_columns, llmlab_amx_conv_block) use
 * the same two layouts the other way round: the kernel, packed once at load
 * as a (c_out, taps * c_in) matrix, is the row-tile side, and the input's
 * shifted windows (im2col columns, one per output pixel) are packed straight
 * from the NCHW picture into pair tiles, so that the output comes out as
 * (c_out, pixels), the picture's own layout.
 */
/* The workspace's CFLAGS turn AMX off for llama.cpp (see .cargo/config.toml);
 * a target pragma, unlike -m flags, overrides that for this file alone. */
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw")
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define TILE_ROWS 16
#define TILE_K 32
#define TILE_VALUES (TILE_ROWS * TILE_K)
/* Rows of A per pass over W (see llmlab_amx_gemm). */
#define GROUP_ROWS 128

static void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

int llmlab_amx_init(void) {
    unsigned r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    cpuid(1, 0, r);
    if (!((r[2] >> 27) & 1)) return 0; /* OSXSAVE: xgetbv is allowed */
    cpuid(7, 0, r);
    int amx_bf16 = (r[3] >> 22) & 1, amx_tile = (r[3] >> 24) & 1, avx512f = (r[1] >> 16) & 1;
    if (!(amx_bf16 && amx_tile && avx512f)) return 0;
    /* The OS must save tile state (XCR0 bits 17 and 18), and Linux hands
     * the 8 KiB of tile data only to a process that asks. A VM that lists
     * AMX but does not enable it fails one of these two checks instead of
     * trapping on the first tile instruction. */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static inline uint16_t bf16_round(float x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u); /* to nearest, ties to even; inputs are finite */
    return (uint16_t)(bits >> 16);
}

static inline float bf16_value(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

static inline void split(float x, uint16_t *hi, uint16_t *lo) {
    uint16_t top = bf16_round(x);
    *hi = top;
    *lo = bf16_round(x - bf16_value(top));
}

/* One tile row: 32 values from src (only `count` of them real, the rest
 * zero), split into hi and, when lo is not NULL, lo. */
static inline void pack_tile_row(const float *src, size_t count, uint16_t *hi, uint16_t *lo) {
    if (count == TILE_K && lo) {
        for (size_t c = 0; c < TILE_K; c++) split(src[c], &hi[c], &lo[c]);
    } else if (count == TILE_K) {
        for (size_t c = 0; c < TILE_K; c++) hi[c] = bf16_round(src[c]);
    } else {
        for (size_t c = 0; c < TILE_K; c++) {
            uint16_t h, l;
            split(c < count ? src[c] : 0.0f, &h, &l);
            hi[c] = h;
            if (lo) lo[c] = l;
        }
    }
}

/* x: rows x k floats, row-major. hi, lo: rows_pad * k_pad values each
 * (rows_pad a multiple of 32 and at least rows; lo may be NULL), every one
 * written, padding with zeros. */
void llmlab_amx_pack_rows(const float *x, size_t rows, size_t k, size_t k_pad, size_t rows_pad, uint16_t *hi,
                          uint16_t *lo) {
    static const float zeros[TILE_K];
    size_t k_tiles = k_pad / TILE_K;
    for (size_t row = 0; row < rows_pad; row++) {
        size_t group = row / TILE_ROWS, r = row % TILE_ROWS;
        for (size_t kb = 0; kb < k_tiles; kb++) {
            size_t at = (group * k_tiles + kb) * TILE_VALUES + r * TILE_K, first = kb * TILE_K;
            size_t count = row >= rows || first >= k ? 0 : (k - first < TILE_K ? k - first : TILE_K);
            const float *src = count ? x + row * k + first : zeros;
            pack_tile_row(src, count, hi + at, lo ? lo + at : NULL);
        }
    }
}

/* w: n x k floats, row-major. hi, lo: n_pad * k_pad values each. */
void llmlab_amx_pack_weights(const float *w, size_t n, size_t k, size_t n_pad, size_t k_pad, uint16_t *hi,
                             uint16_t *lo) {
    size_t k_tiles = k_pad / TILE_K;
    for (size_t group = 0; group < n_pad / TILE_ROWS; group++)
        for (size_t kb = 0; kb < k_tiles; kb++)
            for (size_t r = 0; r < TILE_ROWS; r++)
                for (size_t j = 0; j < TILE_ROWS; j++)
                    for (size_t p = 0; p < 2; p++) {
                        size_t row = group * TILE_ROWS + j, col = kb * TILE_K + 2 * r + p;
                        float v = (row < n && col < k) ? w[row * k + col] : 0.0f;
                        size_t at = (group * k_tiles + kb) * TILE_VALUES + r * TILE_K + 2 * j + p;
                        split(v, &hi[at], &lo[at]);
                    }
}

/* Tiles 0-3 accumulate a 32 x 32 block of the output, 4-5 hold two A
 * tiles (32 rows), 6-7 two W tiles (32 columns). */
static void configure_tiles(void) {
    struct {
        uint8_t palette_id, start_row, reserved[14];
        uint16_t colsb[16];
        uint8_t rows[16];
    } __attribute__((packed)) cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = TILE_ROWS;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

#define LOAD_A(src)                                                                                                  \
    do {                                                                                                             \
        _tile_loadd(4, (src), 64);                                                                                   \
        _tile_loadd(5, (src) + a_group_stride, 64);                                                                  \
    } while (0)
#define LOAD_W(src)                                                                                                  \
    do {                                                                                                             \
        _tile_loadd(6, (src), 64);                                                                                   \
        _tile_loadd(7, (src) + w_group_stride, 64);                                                                  \
    } while (0)
#define PRODUCTS()                                                                                                   \
    do {                                                                                                             \
        _tile_dpbf16ps(0, 4, 6);                                                                                     \
        _tile_dpbf16ps(1, 4, 7);                                                                                     \
        _tile_dpbf16ps(2, 5, 6);                                                                                     \
        _tile_dpbf16ps(3, 5, 7);                                                                                     \
    } while (0)

/*
 * out[m][n] = A . W^T + bias. a_hi/a_lo: row tiles of at least m rows
 * rounded up to 32; w_hi/w_lo: pair tiles of n_pad (a multiple of 32)
 * columns; k_pad a multiple of 32; bias: n floats or NULL; a_lo and w_lo
 * are read only when `split` is set.
 */
void llmlab_amx_gemm(const uint16_t *a_hi, const uint16_t *a_lo, size_t m, size_t k_pad, const uint16_t *w_hi,
                     const uint16_t *w_lo, size_t n, size_t n_pad, const float *bias, float *out, size_t ldc,
                     int split) {
    configure_tiles();
    size_t k_tiles = k_pad / TILE_K;
    size_t a_group_stride = k_tiles * TILE_VALUES, w_group_stride = k_tiles * TILE_VALUES;
    float block[32][32];
    /* Blocking: a group of row blocks (GROUP_ROWS rows of A, hi and lo)
     * stays in L2 while each 32-column slice of W is used for every block
     * of the group, so W (2.4 MB for MiniLM's feed-forward layers, more
     * than L2) streams from memory once per group instead of once per 32
     * rows. On MiniLM's shapes this was a few percent faster than 32-row
     * blocks outside and up to 1.7x faster than W slices outside (A then
     * streams from L2 through the tile loads, which stall on it). Storing
     * finished tiles straight into the wide output rows, instead of
     * through `block`, was slower. */
    for (size_t group = 0; group < m; group += GROUP_ROWS) {
        size_t group_end = group + GROUP_ROWS < m ? group + GROUP_ROWS : m;
        for (size_t nb = 0; nb < n_pad; nb += 32) {
            size_t w_offset = (nb / TILE_ROWS) * w_group_stride;
            for (size_t mb = group; mb < group_end; mb += 32) {
                size_t a_offset = (mb / TILE_ROWS) * a_group_stride;
                size_t rows = m - mb < 32 ? m - mb : 32;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (size_t kb = 0; kb < k_tiles; kb++) {
                    size_t step = kb * TILE_VALUES;
                    if (split) {
                        /* Ordered so that each operand pair shares a
                         * load with the next: 8 tile loads, 12 products. */
                        LOAD_A(a_hi + a_offset + step);
                        LOAD_W(w_lo + w_offset + step);
                        PRODUCTS(); /* hi x lo */
                        LOAD_W(w_hi + w_offset + step);
                        PRODUCTS(); /* hi x hi */
                        LOAD_A(a_lo + a_offset + step);
                        PRODUCTS(); /* lo x hi */
                    } else {
                        LOAD_A(a_hi + a_offset + step);
                        LOAD_W(w_hi + w_offset + step);
                        PRODUCTS();
                    }
                }
                _tile_stored(0, &block[0][0], 128);
                _tile_stored(1, &block[0][16], 128);
                _tile_stored(2, &block[16][0], 128);
                _tile_stored(3, &block[16][16], 128);
                size_t cols = nb >= n ? 0 : (n - nb < 32 ? n - nb : 32);
                for (size_t r = 0; r < rows; r++) {
                    float *dst = out + (mb + r) * ldc + nb;
                    for (size_t j = 0; j < cols; j++) dst[j] = block[r][j] + (bias ? bias[nb + j] : 0.0f);
                }
            }
        }
    }
    _tile_release();
}

/* Rounds 16 floats to bf16 (to nearest, ties to even, like bf16_round) and
 * returns them as 32-bit lanes whose upper halves are the bf16 values. */
static inline __m512i bf16_round16(__m512 x) {
    __m512i bits = _mm512_castps_si512(x);
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    return _mm512_and_si512(rounded, _mm512_set1_epi32((int)0xffff0000u));
}

/* One pair-tile row from two rows of 16 values (K = 2r and 2r + 1): lane j
 * holds even[j] in its low half and odd[j] in its high half, which in
 * memory is the pair (even[j], odd[j]). Splits into hi and lo parts. */
static inline void store_pair_row(__m512 even, __m512 odd, uint16_t *hi, uint16_t *lo) {
    __m512i even_hi = bf16_round16(even), odd_hi = bf16_round16(odd);
    __m512i pairs = _mm512_or_si512(_mm512_srli_epi32(even_hi, 16), odd_hi);
    _mm512_storeu_si512((void *)hi, pairs);
    if (lo) {
        __m512i even_lo = bf16_round16(_mm512_sub_ps(even, _mm512_castsi512_ps(even_hi)));
        __m512i odd_lo = bf16_round16(_mm512_sub_ps(odd, _mm512_castsi512_ps(odd_hi)));
        _mm512_storeu_si512((void *)lo, _mm512_or_si512(_mm512_srli_epi32(even_lo, 16), odd_lo));
    }
}

/* Where 16 consecutive im2col columns (output pixels) read the picture. */
struct pixel_group {
    size_t first, columns; /* the group's first column; all columns */
    size_t image, oy, ox;  /* of its first column */
    int one_row;           /* all 16 on one output row of one image */
};

/* The 16 values of one im2col row (channel c at tap dy, dx) for the
 * group's pixels: zero outside the picture (padding) and past the last
 * column. */
static inline __m512 window_values(const float *x, size_t c_in, size_t h, size_t w, size_t out_h, size_t out_w,
                                   size_t padding,
                                   const struct pixel_group *g, size_t c, size_t dy, size_t dx) {
    long iy = (long)g->oy + (long)dy - (long)padding, ix = (long)g->ox + (long)dx - (long)padding;
    if (g->one_row) {
        if (iy < 0 || iy >= (long)h) return _mm512_setzero_ps();
        const float *row = x + ((g->image * c_in + c) * h + (size_t)iy) * w;
        if (ix >= 0 && ix + 16 <= (long)w) return _mm512_loadu_ps(row + ix);
    }
    /* Slow path: a group that wraps a row or an image, or touches the
     * padding at the left or right edge. */
    float values[16];
    size_t image = g->image, oy = g->oy, ox = g->ox;
    for (size_t j = 0; j < 16; j++) {
        values[j] = 0.0f;
        if (g->first + j < g->columns) {
            long y = (long)oy + (long)dy - (long)padding, xx = (long)ox + (long)dx - (long)padding;
            if (y >= 0 && y < (long)h && xx >= 0 && xx < (long)w)
                values[j] = x[((image * c_in + c) * h + (size_t)y) * w + (size_t)xx];
        }
        if (++ox == out_w) {
            ox = 0;
            if (++oy == out_h) {
                oy = 0;
                image++;
            }
        }
    }
    return _mm512_loadu_ps(values);
}

/*
 * Pair tiles of im2col columns [first, first + count) of a stride-1
 * convolution over x (batch x c_in x h x w floats, NCHW), columns ordered
 * (image, output row, output column), K ordered (dy, dx, channel) like the
 * packed kernel. The output is out_h x out_w per image (h + 2 * padding -
 * kernel + 1 by w's rule). hi, lo: round_up(count, 32) * k_pad values each
 * (lo may be NULL), every one written.
 */
void llmlab_amx_pack_conv_columns(const float *x, size_t c_in, size_t h, size_t w, size_t kernel, size_t padding,
                                  size_t first, size_t count, size_t k_pad, uint16_t *hi, uint16_t *lo) {
    size_t out_h = h + 2 * padding + 1 - kernel, out_w = w + 2 * padding + 1 - kernel, pixels = out_h * out_w;
    size_t k = kernel * kernel * c_in, k_tiles = k_pad / TILE_K, groups = ((count + 31) / 32) * 2;
    for (size_t gi = 0; gi < groups; gi++) {
        struct pixel_group g;
        g.first = first + gi * TILE_ROWS;
        g.columns = first + count;
        g.image = g.first / pixels;
        g.oy = (g.first % pixels) / out_w;
        g.ox = (g.first % pixels) % out_w;
        g.one_row = g.first + 16 <= g.columns && g.ox + 16 <= out_w;
        int past_end = g.first >= g.columns;
        /* K walks in order, so its (dy, dx, channel) advance as counters. */
        size_t c = 0, dy = 0, dx = 0;
        for (size_t kb = 0; kb < k_tiles; kb++) {
            uint16_t *tile_hi = hi + (gi * k_tiles + kb) * TILE_VALUES;
            uint16_t *tile_lo = lo ? lo + (gi * k_tiles + kb) * TILE_VALUES : NULL;
            for (size_t r = 0; r < TILE_ROWS; r++) {
                __m512 pair[2];
                for (size_t p = 0; p < 2; p++) {
                    size_t kk = kb * TILE_K + 2 * r + p;
                    if (kk >= k || past_end) {
                        pair[p] = _mm512_setzero_ps();
                        continue;
                    }
                    pair[p] = window_values(x, c_in, h, w, out_h, out_w, padding, &g, c, dy, dx);
                    if (++c == c_in) {
                        c = 0;
                        if (++dx == kernel) {
                            dx = 0;
                            dy++;
                        }
                    }
                }
                store_pair_row(pair[0], pair[1], tile_hi + r * TILE_K, tile_lo ? tile_lo + r * TILE_K : NULL);
            }
        }
    }
}

/* Tile products along one K chunk per pass, so that the chunk of A (row
 * tiles) and of the columns (pair tiles) stay in L2 while every 32 x 32
 * block of the output is visited; the accumulators go to `acc` between
 * chunks. 16 tiles = 512 bf16 values of K. */
#define K_CHUNK_TILES 16

/*
 * out[r][c] = sum_k A[r][k] * cols[c][k] + row_bias[r] for r < rows,
 * c < cols: a block of a convolution's output (c_out rows, pixel columns).
 * a_hi/a_lo: row tiles of the block's first row on (row group stride
 * k_tiles tiles); w_hi/w_lo: pair tiles of the block's first column on
 * (same stride); acc: round_up(rows, 32) * round_up(cols, 32) floats of
 * scratch; out: `ldc` floats per row; row_bias: rows floats or NULL.
 */
void llmlab_amx_conv_block(const uint16_t *a_hi, const uint16_t *a_lo, size_t rows, size_t k_tiles,
                           const uint16_t *w_hi, const uint16_t *w_lo, size_t cols, const float *row_bias,
                           float *out, size_t ldc, float *acc, int split) {
    configure_tiles();
    size_t group_stride = k_tiles * TILE_VALUES;
    size_t a_group_stride = group_stride, w_group_stride = group_stride;
    size_t rows_pad = (rows + 31) / 32 * 32, cols_pad = (cols + 31) / 32 * 32;
    size_t acc_stride = cols_pad * sizeof(float);
    for (size_t k0 = 0; k0 < k_tiles; k0 += K_CHUNK_TILES) {
        size_t k1 = k0 + K_CHUNK_TILES < k_tiles ? k0 + K_CHUNK_TILES : k_tiles;
        for (size_t nb = 0; nb < cols_pad; nb += 32) {
            size_t w_offset = (nb / TILE_ROWS) * w_group_stride;
            for (size_t mb = 0; mb < rows_pad; mb += 32) {
                size_t a_offset = (mb / TILE_ROWS) * a_group_stride;
                float *c00 = acc + mb * cols_pad + nb, *c10 = c00 + 16 * cols_pad;
                if (k0 == 0) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                } else {
                    _tile_loadd(0, c00, acc_stride);
                    _tile_loadd(1, c00 + 16, acc_stride);
                    _tile_loadd(2, c10, acc_stride);
                    _tile_loadd(3, c10 + 16, acc_stride);
                }
                for (size_t kb = k0; kb < k1; kb++) {
                    size_t step = kb * TILE_VALUES;
                    if (split) {
                        LOAD_A(a_hi + a_offset + step);
                        LOAD_W(w_lo + w_offset + step);
                        PRODUCTS();
                        LOAD_W(w_hi + w_offset + step);
                        PRODUCTS();
                        LOAD_A(a_lo + a_offset + step);
                        PRODUCTS();
                    } else {
                        LOAD_A(a_hi + a_offset + step);
                        LOAD_W(w_hi + w_offset + step);
                        PRODUCTS();
                    }
                }
                _tile_stored(0, c00, acc_stride);
                _tile_stored(1, c00 + 16, acc_stride);
                _tile_stored(2, c10, acc_stride);
                _tile_stored(3, c10 + 16, acc_stride);
            }
        }
    }
    _tile_release();
    for (size_t r = 0; r < rows; r++) {
        float bias = row_bias ? row_bias[r] : 0.0f;
        const float *src = acc + r * cols_pad;
        float *dst = out + r * ldc;
        for (size_t c = 0; c < cols; c++) dst[c] = src[c] + bias;
    }
}
