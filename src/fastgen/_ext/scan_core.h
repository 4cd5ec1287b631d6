/* Restart segments from one baseline JPEG scan, without an entropy coder of our own.
 *
 * libjpeg-turbo encodes a tile-aligned region of a frame in one call; its scan has no restart
 * markers, so the DC predictions run on from tile to tile.  A restart segment differs from the
 * same bits in only three symbols: the first DC difference of each component in the segment's
 * first MCU, which a restart codes against zero instead of the previous block.  So the region's
 * scan is parsed symbol by symbol (Huffman decode, no coefficients kept), those three DC symbols
 * are re-coded with the same table, every other bit is copied, and each segment is padded with
 * 1 bits to a byte and byte-stuffed as the standard says.  The result is byte for byte what
 * libjpeg-turbo writes for each tile encoded on its own (the tests check it).
 *
 * Layout handled: 3 components, 4:2:0 (Y 2x2 = 4 blocks, Cb, Cr), one interleaved scan.
 * Every read is bounds-checked: a damaged scan gives an error code, never a read past its end.
 */
#ifndef FASTGEN_SCAN_CORE_H
#define FASTGEN_SCAN_CORE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FS_LOOK 9                      /* codes up to 9 bits are decoded by one table lookup */

typedef struct {
    uint8_t look_len[1 << FS_LOOK];    /* 0: longer code, use maxcode */
    uint8_t look_sym[1 << FS_LOOK];
    uint8_t look_ac_total[1 << FS_LOOK];   /* an AC symbol's code length + its size bits */
    int32_t maxcode[18];               /* largest code of each length, -1 where none */
    int32_t valoff[18];                /* symbol index = code + valoff[length] */
    uint8_t vals[256];
    uint16_t enc_code[256];            /* encoder side, by symbol */
    uint8_t enc_len[256];
} fs_huff;

enum { FS_OK = 0, FS_BAD_TABLE = -1, FS_BAD_DATA = -2, FS_SHORT_DATA = -3, FS_NO_ROOM = -4,
       FS_NO_MEMORY = -5, FS_MARKER = -6 };

/* Table from a DHT's 16 code counts and its symbols (JPEG Annex C). */
static int fs_huff_build(fs_huff *t, const uint8_t *counts, const uint8_t *symbols)
{
    int sizes[257], codes[256];
    int n = 0, length, i;
    for (length = 1; length <= 16; length++)
        for (i = 0; i < counts[length - 1]; i++) {
            if (n >= 256) return FS_BAD_TABLE;
            sizes[n++] = length;
        }
    sizes[n] = 0;
    {
        int code = 0, size = n ? sizes[0] : 0, p = 0;
        while (p < n) {
            while (p < n && sizes[p] == size) codes[p++] = code++;
            if (code >= (1 << size)) return FS_BAD_TABLE;     /* over-subscribed (as libjpeg) */
            code <<= 1;
            size++;
        }
    }
    memset(t->look_len, 0, sizeof t->look_len);
    memset(t->enc_len, 0, sizeof t->enc_len);
    memcpy(t->vals, symbols, (size_t)n);
    {
        int p = 0;
        for (length = 1; length <= 16; length++) {
            int c = counts[length - 1];
            if (c) {
                t->valoff[length] = p - codes[p];
                t->maxcode[length] = codes[p + c - 1];
                if (length <= FS_LOOK)
                    for (i = 0; i < c; i++) {
                        int first = codes[p + i] << (FS_LOOK - length), k;
                        for (k = 0; k < 1 << (FS_LOOK - length); k++) {
                            t->look_len[first + k] = (uint8_t)length;
                            t->look_sym[first + k] = symbols[p + i];
                            t->look_ac_total[first + k] = (uint8_t)(length + (symbols[p + i] & 15));
                        }
                    }
                p += c;
            } else {
                t->maxcode[length] = -1;
                t->valoff[length] = 0;
            }
        }
        t->maxcode[17] = INT32_MAX;
    }
    for (i = 0; i < n; i++) {
        t->enc_code[symbols[i]] = (uint16_t)codes[i];
        t->enc_len[symbols[i]] = (uint8_t)sizes[i];
    }
    return FS_OK;
}

/* The 8 bytes at byte ``at`` of ``d`` as a big-endian word; zeros past the end. */
static inline uint64_t fs_load64(const uint8_t *d, size_t n, size_t at)
{
    uint64_t word = 0;
    int k;
    if (at + 8 <= n) {
        memcpy(&word, d + at, 8);
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        return __builtin_bswap64(word);
#elif defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        return word;
#else
        word = 0;
#endif
    }
    for (k = 0; k < 8; k++) word = (word << 8) | (at + k < n ? d[at + k] : 0);
    return word;
}

/* 32 bits at bit ``pos`` of ``d`` (MSB first); zeros past the end. */
static inline uint32_t fs_peek32(const uint8_t *d, size_t n, uint64_t pos)
{
    return (uint32_t)((fs_load64(d, n, (size_t)(pos >> 3)) << (pos & 7)) >> 32);
}

/* The 64 bits at byte ``pos / 8`` shifted to start at bit ``pos``: 57 or more valid bits. */
static inline uint64_t fs_window(const uint8_t *d, size_t n, uint64_t pos, int *have)
{
    *have = 64 - (int)(pos & 7);
    return fs_load64(d, n, (size_t)(pos >> 3)) << (pos & 7);
}

/* ``count`` (1..32) bits at bit ``pos``. */
static inline uint32_t fs_peek(const uint8_t *d, size_t n, uint64_t pos, int count)
{
    return (uint32_t)(fs_peek32(d, n, pos) >> (32 - count));
}

/* The symbol whose code starts the 32 bits ``look``, and its code length in ``*length``; -1 for
 * bits that are no code. */
static inline int fs_symbol(const fs_huff *t, uint32_t look, int *length)
{
    uint32_t top = look >> (32 - FS_LOOK);
    int l = t->look_len[top];
    if (l) {
        *length = l;
        return t->look_sym[top];
    }
    for (l = FS_LOOK + 1; l <= 16; l++) {
        int32_t code = (int32_t)(look >> (32 - l));
        if (code <= t->maxcode[l]) {
            *length = l;
            return t->vals[(code + t->valoff[l]) & 255];
        }
    }
    return -1;
}

typedef struct {
    uint8_t *out;
    size_t cap, len;
    uint64_t acc;                      /* pending bits, right-aligned */
    int bits;
    int full;
} fs_writer;

static inline void fs_put(fs_writer *w, uint32_t value, int count)   /* count <= 32 */
{
    if (count <= 0) return;
    w->acc = (w->acc << count) | (value & (uint32_t)((1ull << count) - 1));
    w->bits += count;
    while (w->bits >= 8) {
        uint8_t byte = (uint8_t)(w->acc >> (w->bits - 8));
        w->bits -= 8;
        if (w->len + 2 > w->cap) { w->full = 1; return; }
        w->out[w->len++] = byte;
        if (byte == 0xFF) w->out[w->len++] = 0;
    }
}

static inline void fs_pad(fs_writer *w)
{
    if (w->bits & 7) fs_put(w, 0x7F, 8 - (w->bits & 7));
    w->acc = 0;
}

static void fs_copy(fs_writer *w, const uint8_t *d, size_t n, uint64_t from, uint64_t to)
{
    while (from < to && !w->full) {
        int count = to - from > 32 ? 32 : (int)(to - from);
        fs_put(w, fs_peek(d, n, from, count), count);
        from += (uint64_t)count;
    }
}

/* A DC difference ``v`` coded with table ``t``: its category's code, then its low bits. */
static int fs_put_dc(fs_writer *w, const fs_huff *t, int v)
{
    int magnitude = v < 0 ? -v : v, category = 0;
    while (magnitude) { category++; magnitude >>= 1; }
    if (category > 11 || !t->enc_len[category]) return FS_BAD_TABLE;
    fs_put(w, t->enc_code[category], t->enc_len[category]);
    fs_put(w, (uint32_t)(v < 0 ? v - 1 : v), category);
    return FS_OK;
}

/* Restart segments of interval ``interval`` MCUs from a scan of ``mcu_rows`` x ``mcu_cols``
 * 4:2:0 MCUs (``scan``: entropy-coded data as in the file, stuffed, no markers).  Writes the
 * segments back to back into ``out`` and the start of segment i at ``offsets[i]`` (offsets has
 * segments + 1 entries).  ``dc``/``ac``: the tables of components Y, Cb, Cr.  Returns FS_OK or
 * an error code. */
static int fs_restart_segments(const uint8_t *scan, size_t scan_len, int mcu_rows, int mcu_cols,
                               int interval, const fs_huff *dc[3], const fs_huff *ac[3],
                               uint8_t *out, size_t cap, int64_t *offsets)
{
    static const int component_of_block[6] = {0, 0, 0, 0, 1, 2};
    uint8_t *clean = (uint8_t *)malloc(scan_len ? scan_len : 1);
    size_t n = 0, i;
    int pred[3] = {0, 0, 0}, segment = 0, row, col, block, status = FS_OK;
    uint64_t pos = 0, copied = 0, end, window = 0;
    int have = 0;
    fs_writer w;

    if (!clean) return FS_NO_MEMORY;
    for (i = 0; i < scan_len; i++) {                       /* undo the FF 00 stuffing */
        clean[n++] = scan[i];
        if (scan[i] == 0xFF) {
            if (i + 1 >= scan_len || scan[i + 1] != 0) { free(clean); return FS_MARKER; }
            i++;
        }
    }
    end = (uint64_t)n * 8;
    w.out = out; w.cap = cap; w.len = 0; w.acc = 0; w.bits = 0; w.full = 0;

    for (row = 0; row < mcu_rows && status == FS_OK; row++)
        for (col = 0; col < mcu_cols && status == FS_OK; col++) {
            int first = col % interval == 0;
            if (first) {
                if (segment) { fs_copy(&w, clean, n, copied, pos); fs_pad(&w); }
                offsets[segment++] = (int64_t)w.len;
                copied = pos;
            }
            for (block = 0; block < 6; block++) {
                int c = component_of_block[block], category, diff = 0, k, length = 0;
                uint64_t start = pos;
                const fs_huff *table = ac[c];
                /* ``window``: the next bits, MSB first, at least 32 of them valid (reloaded
                 * from memory when fewer are left: a symbol and its bits are at most 27) */
                if (have < 32) window = fs_window(clean, n, pos, &have);
                category = fs_symbol(dc[c], (uint32_t)(window >> 32), &length);
                if (category < 0 || category > 11) { status = FS_BAD_DATA; break; }
                if (category) {
                    diff = (int)((window << length) >> (64 - category));
                    if (diff < (1 << (category - 1))) diff -= (1 << category) - 1;
                }
                window <<= length + category; have -= length + category;
                pos += (uint64_t)(length + category);
                if (first && block != 1 && block != 2 && block != 3) {
                    /* the segment's first block of this component: its DC against zero */
                    fs_copy(&w, clean, n, copied, start);
                    status = fs_put_dc(&w, dc[c], pred[c] + diff);
                    copied = pos;
                }
                pred[c] += diff;
                for (k = 1; k < 64;) {
                    uint32_t top;
                    int rs, total;
                    if (have < 32) window = fs_window(clean, n, pos, &have);
                    top = (uint32_t)(window >> (64 - FS_LOOK));
                    if (table->look_len[top]) {          /* the common case: one lookup */
                        rs = table->look_sym[top];
                        total = table->look_ac_total[top];
                    } else {
                        rs = fs_symbol(table, (uint32_t)(window >> 32), &length);
                        if (rs < 0) { status = FS_BAD_DATA; break; }
                        total = length + (rs & 15);
                    }
                    window <<= total; have -= total;
                    pos += (uint64_t)total;
                    if (!(rs & 15)) {
                        if (rs != 0xF0) break;           /* end of block */
                        k += 16;
                    } else {
                        k += (rs >> 4) + 1;
                    }
                    if (k > 64) { status = FS_BAD_DATA; break; }
                }
                if (status != FS_OK) break;
                if (pos > end) { status = FS_SHORT_DATA; break; }
            }
        }
    if (status == FS_OK) {
        fs_copy(&w, clean, n, copied, pos);
        fs_pad(&w);
        offsets[segment] = (int64_t)w.len;
        if (w.full) status = FS_NO_ROOM;
    }
    free(clean);
    return status;
}

/* Where the scan of a baseline JPEG lies: [*start, *end) after its SOS segment, EOI excluded,
 * and its size in 4:2:0 MCUs.  The JPEG must be 3 components 4:2:0 without restarts. */
static int fs_find_scan(const uint8_t *d, size_t n, size_t *start, size_t *end, int *mcu_rows,
                        int *mcu_cols)
{
    size_t i = 2;
    int found_frame = 0;
    if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return FS_BAD_DATA;
    while (i + 4 <= n) {
        int marker = d[i + 1];
        size_t length = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (d[i] != 0xFF || length < 2 || i + 2 + length > n) return FS_BAD_DATA;
        if (marker == 0xC0 || marker == 0xC1) {
            const uint8_t *f = d + i + 4;
            if (length < 17 || f[5] != 3 || f[7] != 0x22 || f[10] != 0x11 || f[13] != 0x11)
                return FS_BAD_DATA;
            *mcu_rows = (((int)f[1] << 8 | f[2]) + 15) / 16;
            *mcu_cols = (((int)f[3] << 8 | f[4]) + 15) / 16;
            found_frame = 1;
        } else if (marker == 0xDD) {
            return FS_MARKER;
        } else if (marker == 0xDA) {
            if (!found_frame) return FS_BAD_DATA;
            *start = i + 2 + length;
            *end = n >= *start + 2 && d[n - 2] == 0xFF && d[n - 1] == 0xD9 ? n - 2 : n;
            return FS_OK;
        }
        i += 2 + length;
    }
    return FS_BAD_DATA;
}

/* A spliced frame's size, then (``out`` not NULL) the frame itself: ``header``, then the
 * template's scan (``tmpl``, restart markers included; segment i of ``count`` starts at
 * ``starts[i]``, ``starts[count]`` = its length + 2) with tiles t0..t1 of MCU rows r0..r1
 * (``tiles`` a row) taken from ``fresh`` (their segments, back to back, at ``fresh_offsets``),
 * then EOI.  Runs of template segments are copied whole, restart markers and all: a segment
 * keeps its index, so its marker keeps its number. */
static size_t fs_assemble(const uint8_t *header, size_t header_len, const uint8_t *tmpl,
                          const int64_t *starts, int count, int tiles, int t0, int r0, int t1, int r1,
                          const uint8_t *fresh, const int64_t *fresh_offsets, uint8_t *out)
{
    static const uint8_t eoi[2] = {0xFF, 0xD9};
    size_t len = 0, from = 0;
    int r, t;
#define FS_EMIT(src, n) do { if (out) memcpy(out + len, (src), (n)); len += (n); } while (0)
    FS_EMIT(header, header_len);
    for (r = r0; r < r1; r++) {
        size_t first = (size_t)starts[r * tiles + t0];
        FS_EMIT(tmpl + from, first - from);
        for (t = t0; t < t1; t++) {
            int i = r * tiles + t, k = (r - r0) * (t1 - t0) + (t - t0);
            FS_EMIT(fresh + fresh_offsets[k], (size_t)(fresh_offsets[k + 1] - fresh_offsets[k]));
            if (t + 1 < t1) {
                uint8_t marker[2] = {0xFF, (uint8_t)(0xD0 + (i & 7))};
                FS_EMIT(marker, 2);
            }
        }
        from = (size_t)starts[r * tiles + t1] - 2;           /* the marker after this row's last */
    }
    FS_EMIT(tmpl + from, (size_t)starts[count] - 2 - from);
    FS_EMIT(eoi, 2);
#undef FS_EMIT
    return len;
}

#endif
