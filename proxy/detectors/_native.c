/* The content detectors' per-completion arithmetic, in C.
 *
 * proxy/detectors/shingles.py and bag.py hold the reference: numpy code whose cost on a short
 * completion is numpy's fixed cost per operation, not the words. These functions compute the
 * very same values (hashes and sketches are state that replicas share, and state written by a
 * proxy without this module is read by one with it), in one pass over the text. The modules use
 * them when this extension was built, and their numpy code otherwise.
 *
 * Every length comes from the Python objects; no input, of any size or content, reads or writes
 * outside them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <stdint.h>
#include <string.h>

#define BAG_FEATURES 48
#define BAG_BYTES (4 * BAG_FEATURES)
#define KEY_BYTES 4
#define ENTRY_BYTES (KEY_BYTES + BAG_BYTES)
#define HEAD (4 * BAG_FEATURES)           /* bag.py: sorted first, past this many content words */
#define CONTENT_BYTES ((1 << 20) / 8)     /* one bit per top 20 bits of a word's hash */
#define LAST_VALUE 0xFFFFFFFBu            /* bag.py: values sit below an empty slot's */
#define TOP 0x3FFFFFFEu                   /* bag.py: the largest real feature */
#define STACK_WORDS 512                   /* a text of up to 1,023 bytes: no allocation */

static const uint64_t WORD_MIX = 0xD6E8FEB86659FD93ULL;
static const uint64_t P0 = 0x9E3779B97F4A7C15ULL;
static const uint64_t P1 = 0xC2B2AE3D27D4EB4FULL;
static const uint64_t P2 = 0x165667B19E3779F9ULL;
static const uint32_t WEIGHTS[4] = {1, 4, 8, 4}; /* bag.py: LIGHT, HEAVY, NUMBER, HEAVY */

/* splitmix64's finalizer (shingles.py: _mix); unsigned arithmetic wraps as numpy's uint64. */
static inline uint64_t mix(uint64_t value)
{
    value ^= value >> 30;
    value *= 0xBF58476D1CE4E5B9ULL;
    value ^= value >> 27;
    value *= 0x94D049BB133111EBULL;
    value ^= value >> 31;
    return value;
}

static inline uint32_t read_u32le(const unsigned char *at)
{
    return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

static inline void write_u32le(unsigned char *at, uint32_t value)
{
    at[0] = (unsigned char)value;
    at[1] = (unsigned char)(value >> 8);
    at[2] = (unsigned char)(value >> 16);
    at[3] = (unsigned char)(value >> 24);
}

/* shingles.py: _SENTENCE_END, matched on the bytes before folding. */
static inline int sentence_end(unsigned char byte)
{
    return byte == '.' || byte == '!' || byte == '?' || byte == '\n';
}

typedef struct {
    Py_ssize_t count;   /* words */
    Py_ssize_t opening; /* shingles.py: edge_words */
    Py_ssize_t closing;
} Scan;

/* The words of ``raw`` (runs of bytes that do not fold to a space, as bytes.split() finds them
 * in the folded text: the fold table sends every ASCII whitespace byte to a space and keeps no
 * other), each hashed as shingles.py's _hash_words does on its first 16 folded bytes, zero
 * padded, read as two little-endian uint64. ``hashes`` and ``first`` hold (len + 1) / 2 words,
 * the most ``raw`` can have. The edge words are counted on the way: the words before the first
 * sentence end, and those after the last sentence end that has a word after it. */
static Scan scan_words(const unsigned char *raw, Py_ssize_t length, const unsigned char *fold,
                       uint64_t *hashes, unsigned char *first)
{
    Scan scan = {0, 0, 0};
    Py_ssize_t at = 0, since_end = 0;
    int seen_end = 0, end_pending = 0, end_before_word = 0;
    while (at < length) {
        unsigned char byte = fold[raw[at]];
        if (byte == ' ') {
            if (sentence_end(raw[at])) {
                seen_end = 1;
                end_pending = 1;
            }
            at++;
            continue;
        }
        uint64_t low = 0, high = 0;
        unsigned shift = 0;
        first[scan.count] = byte;
        do {
            if (shift < 64)
                low |= (uint64_t)byte << shift;
            else if (shift < 128)
                high |= (uint64_t)byte << (shift - 64);
            shift = shift < 128 ? shift + 8 : shift;
            at++;
        } while (at < length && (byte = fold[raw[at]]) != ' ');
        hashes[scan.count] = mix(low * WORD_MIX + high);
        scan.count++;
        if (!seen_end)
            scan.opening++;
        if (end_pending) {
            since_end = 0;
            end_before_word = 1;
            end_pending = 0;
        }
        since_end++;
    }
    /* Fewer than 8 words, or a single sentence: no edges (the sentence-end bytes fold to
     * spaces, so no word holds one). */
    if (scan.count < 8 || !seen_end) {
        scan.opening = scan.closing = 0;
        return scan;
    }
    Py_ssize_t quarter = scan.count / 4;
    scan.closing = end_before_word ? since_end : 0;
    scan.opening = scan.opening < quarter ? scan.opening : quarter;
    scan.closing = scan.closing < quarter ? scan.closing : quarter;
    return scan;
}

/* shingles.py: _shingles_of; ``out`` holds max(count - 2, 1) hashes when there are words. */
static void shingles_of(const uint64_t *hashes, Py_ssize_t count, uint32_t *out)
{
    if (count >= 3) {
        for (Py_ssize_t i = 0; i + 2 < count; i++)
            out[i] = (uint32_t)(mix(hashes[i] * P0 + hashes[i + 1] * P1 + hashes[i + 2] * P2) >> 32);
    } else if (count == 2) {
        out[0] = (uint32_t)(mix((hashes[0] * P0) ^ (hashes[1] * P1)) >> 32);
    } else if (count == 1) {
        out[0] = (uint32_t)(mix(hashes[0] * P0) >> 32);
    }
}

/* The BAG_FEATURES smallest distinct features seen, each with its largest value, sorted: what
 * bag.py's _lightest keeps, found in one pass without sorting every value. A feature pushed out
 * has BAG_FEATURES smaller ones before it, so it never comes back. */
typedef struct {
    uint32_t values[BAG_FEATURES];
    int count;
} Lightest;

static inline void consider(Lightest *best, uint32_t value)
{
    uint32_t feature = value >> 2;
    int count = best->count;
    if (count == BAG_FEATURES && feature > best->values[count - 1] >> 2)
        return;
    /* The first slot whose feature is not below this one's. Which half to keep is a coin flip
     * to the branch predictor: the halving chooses by a conditional move, not a branch. */
    int low = 0;
    if (count) {
        const uint32_t *base = best->values;
        for (int n = count; n > 1; n -= n / 2)
            base = (base[n / 2] >> 2 < feature) ? base + n / 2 : base;
        low = (int)(base - best->values) + (*base >> 2 < feature);
    }
    if (low < count && best->values[low] >> 2 == feature) {
        if (value > best->values[low])
            best->values[low] = value;
        return;
    }
    int kept = count < BAG_FEATURES ? count : BAG_FEATURES - 1;
    memmove(&best->values[low + 1], &best->values[low], (size_t)(kept - low) * sizeof(uint32_t));
    best->values[low] = value;
    if (count < BAG_FEATURES)
        best->count = count + 1;
}

/* bag.py: bag_sketch. ``first`` is overwritten with each word's content flag. Content words
 * are a coin flip to the branch predictor, and the stopword bitmap is out of the first-level
 * cache: the flags are read in one loop (the look-ups overlap), and the content words' values
 * gathered in another, without a branch. */
static void bag_sketch(const uint64_t *hashes, unsigned char *first, uint32_t *values, Scan scan,
                       const unsigned char *content, unsigned char *out)
{
    for (Py_ssize_t i = 0; i < scan.count; i++) {
        uint32_t feature = (uint32_t)(hashes[i] >> 32);
        /* A number (2) wherever it stands, another word 1, or 0 in the opening or closing
         * sentence. */
        uint32_t number = (uint32_t)(first[i] - '0') < 10;
        uint32_t edge = (i < scan.opening) | (i >= scan.count - scan.closing);
        values[i] = (feature & ~3u) | (number << 1) | (~number & ~edge & 1);
        /* The stopword table is indexed by the top 20 bits; bit k of the bitmap is entry k. */
        first[i] = (content[feature >> 15] >> ((feature >> 12) & 7)) & 1;
    }
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < scan.count; i++) {
        values[kept] = values[i];
        kept += first[i];
    }
    Lightest best = {{0}, 0};
    if (kept > HEAD) {
        /* bag.py's pre-filter, kept for its one difference: these values are not clamped, and a
         * feature straddling the cutoff keeps only the classes below it. */
        uint64_t cutoff = (((uint64_t)16 * BAG_FEATURES) << 32) / (uint64_t)kept;
        if (cutoff > 0xFFFFFFFFu)
            cutoff = 0xFFFFFFFFu;
        for (Py_ssize_t i = 0; i < kept; i++)
            if (values[i] < cutoff)
                consider(&best, values[i]);
    }
    if (best.count < BAG_FEATURES) {
        best.count = 0;
        for (Py_ssize_t i = 0; i < kept; i++)
            consider(&best, values[i] < LAST_VALUE ? values[i] : LAST_VALUE);
    }
    memset(out, 0xFF, BAG_BYTES);
    for (int i = 0; i < best.count; i++)
        write_u32le(out + 4 * i, best.values[i]);
}

static PyObject *native_shingle(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "shingle(text, fold, content, limit) takes 4 arguments");
        return NULL;
    }
    PyObject *text = args[0], *fold = args[1], *content = args[2];
    if (!PyUnicode_Check(text) || !PyBytes_Check(fold) || !PyBytes_Check(content)) {
        PyErr_SetString(PyExc_TypeError, "shingle() takes a str and two bytes tables");
        return NULL;
    }
    if (PyBytes_GET_SIZE(fold) != 256 || PyBytes_GET_SIZE(content) != CONTENT_BYTES) {
        PyErr_SetString(PyExc_ValueError, "shingle(): a 256-byte fold table, a 2**20-bit bitmap");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[3]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;

#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) < 0)
        return NULL;
#endif
    /* shingles.py: _encoded. ASCII text is its own UTF-8: read in place, no copy. */
    PyObject *encoded = NULL;
    const unsigned char *raw;
    Py_ssize_t length;
    if (PyUnicode_IS_ASCII(text)) {
        raw = (const unsigned char *)PyUnicode_DATA(text);
        length = PyUnicode_GET_LENGTH(text);
    } else {
        PyObject *lower = PyObject_CallMethod(text, "lower", NULL);
        if (lower == NULL)
            return NULL;
        encoded = PyUnicode_Check(lower) ? PyUnicode_AsEncodedString(lower, "utf-8", "replace")
                                         : NULL;
        if (encoded == NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "str.lower() did not return a str");
        Py_DECREF(lower);
        if (encoded == NULL)
            return NULL;
        raw = (const unsigned char *)PyBytes_AS_STRING(encoded);
        length = PyBytes_GET_SIZE(encoded);
    }
    if (limit < 0)
        limit = 0;
    if (length > limit)
        length = limit;

    /* Per word: its hash, its first byte and (content words only) its sketch value. */
    uint64_t stack_hashes[STACK_WORDS];
    uint32_t stack_values[STACK_WORDS];
    unsigned char stack_first[STACK_WORDS];
    uint64_t *hashes = stack_hashes;
    uint32_t *values = stack_values;
    unsigned char *first = stack_first;
    void *heap = NULL;
    /* Words are separated by at least one byte: a text of n bytes has (n + 1) / 2 at most. */
    Py_ssize_t most = (length + 1) / 2;
    if (most > PY_SSIZE_T_MAX / 16) {
        Py_XDECREF(encoded);
        return PyErr_NoMemory();
    }
    if (most > STACK_WORDS) {
        heap = PyMem_Malloc((size_t)most * (sizeof(uint64_t) + sizeof(uint32_t) + 1));
        if (heap == NULL) {
            Py_XDECREF(encoded);
            return PyErr_NoMemory();
        }
        hashes = (uint64_t *)heap;
        values = (uint32_t *)(hashes + most);
        first = (unsigned char *)(values + most);
    }

    PyObject *result = NULL;
    Scan scan = scan_words(raw, length, (const unsigned char *)PyBytes_AS_STRING(fold), hashes,
                           first);
    Py_ssize_t shingle_count = scan.count >= 3 ? scan.count - 2 : (scan.count ? 1 : 0);
    /* A bytearray, so numpy wraps it as a writable array, as the reference's is. */
    PyObject *shingles = PyByteArray_FromStringAndSize(NULL, shingle_count * 4);
    PyObject *sketch = PyBytes_FromStringAndSize(NULL, BAG_BYTES);
    if (shingles != NULL && sketch != NULL) {
        shingles_of(hashes, scan.count, (uint32_t *)(void *)PyByteArray_AS_STRING(shingles));
        bag_sketch(hashes, first, values, scan,
                   (const unsigned char *)PyBytes_AS_STRING(content),
                   (unsigned char *)PyBytes_AS_STRING(sketch));
        result = PyTuple_Pack(2, shingles, sketch);
    }
    Py_XDECREF(shingles);
    Py_XDECREF(sketch);
    PyMem_Free(heap);
    Py_XDECREF(encoded);
    return result;
}

/* One sketch's features and weights, read once for comparing it with many (bag.py's "mine"). */
typedef struct {
    uint32_t features[BAG_FEATURES];
    uint32_t weights[BAG_FEATURES];
    long below[BAG_FEATURES + 1]; /* the sum of the weights before each slot */
    uint32_t cap;
} Mine;

static void read_mine(const unsigned char *sketch, Mine *mine)
{
    mine->below[0] = 0;
    for (int i = 0; i < BAG_FEATURES; i++) {
        uint32_t value = read_u32le(sketch + 4 * i);
        mine->features[i] = value >> 2;
        mine->weights[i] = WEIGHTS[value & 3];
        mine->below[i + 1] = mine->below[i] + (long)mine->weights[i];
    }
    uint32_t last = mine->features[BAG_FEATURES - 1];
    mine->cap = last < TOP ? last : TOP;
}

/* bag.py: bag_similarities for one other sketch, given ``mine`` sorted (as every sketch
 * bag_sketch makes): numpy's binary searches in a sorted array are these lower and upper
 * bounds. The other sketch may hold anything. */
static double compare(const Mine *mine, const unsigned char *other)
{
    uint32_t last = read_u32le(other + 4 * (BAG_FEATURES - 1)) >> 2;
    uint32_t bound = last < mine->cap ? last : mine->cap;
    int low = 0, high = BAG_FEATURES;
    while (low < high) {
        int middle = (low + high) / 2;
        if (mine->features[middle] <= bound)
            low = middle + 1;
        else
            high = middle;
    }
    long either = mine->below[low], both = 0;
    uint32_t features[BAG_FEATURES], weights[BAG_FEATURES];
    int sorted = 1;
    for (int i = 0; i < BAG_FEATURES; i++) {
        uint32_t value = read_u32le(other + 4 * i);
        features[i] = value >> 2;
        /* Past the cap a feature weighs nothing on either side. */
        weights[i] = features[i] > mine->cap ? 0 : WEIGHTS[value & 3];
        either += weights[i];
        sorted &= i == 0 || features[i] >= features[i - 1];
    }
    if (sorted) {
        /* Both in order, as every sketch bag_sketch makes: one merge. Which side steps on is a
         * coin flip to the branch predictor, so the steps and the sum are conditional moves.
         * Only the other side steps past a match, so a feature it repeats matches again. */
        int i = 0, at = 0;
        while (i < BAG_FEATURES && at < BAG_FEATURES) {
            uint32_t feature = features[i], mine_feature = mine->features[at];
            uint32_t weight = weights[i] < mine->weights[at] ? weights[i] : mine->weights[at];
            both += feature == mine_feature ? weight : 0;
            i += feature <= mine_feature;
            at += mine_feature < feature;
        }
    } else {
        int at = 0;
        uint32_t previous = 0;
        for (int i = 0; i < BAG_FEATURES; i++) {
            uint32_t feature = features[i];
            if (!weights[i])
                continue;
            if (feature < previous)
                at = 0; /* out of order: search from the start again */
            previous = feature;
            while (at < BAG_FEATURES && mine->features[at] < feature)
                at++;
            if (at < BAG_FEATURES && mine->features[at] == feature)
                both += weights[i] < mine->weights[at] ? weights[i] : mine->weights[at];
        }
    }
    long rest = either - both;
    return (double)both / (double)(rest > 1 ? rest : 1);
}

static int read_sketch(PyObject *sketch, Mine *mine)
{
    if (!PyBytes_Check(sketch) || PyBytes_GET_SIZE(sketch) != BAG_BYTES) {
        PyErr_SetString(PyExc_ValueError, "a sketch is 192 bytes");
        return -1;
    }
    read_mine((const unsigned char *)PyBytes_AS_STRING(sketch), mine);
    return 0;
}

static PyObject *native_similarities(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "similarities(sketch, others) takes 2 arguments");
        return NULL;
    }
    Mine mine;
    if (read_sketch(args[0], &mine) < 0)
        return NULL;
    PyObject *others = PySequence_Fast(args[1], "similarities(): others must be a sequence");
    if (others == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(others);
    PyObject **items = PySequence_Fast_ITEMS(others);
    PyObject *result = PyList_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *item = items[i];
        PyObject *score = NULL;
        if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) != BAG_BYTES)
            PyErr_SetString(PyExc_ValueError, "a sketch is 192 bytes");
        else
            score = PyFloat_FromDouble(compare(&mine, (const unsigned char *)PyBytes_AS_STRING(item)));
        if (score == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, score);
    }
    Py_DECREF(others);
    return result;
}

static PyObject *native_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    /* A fourth argument, the entries' keys when the caller has them, is recent.scores'
     * contract; reading each key where it compares costs less than a list look-up. */
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scores(sketch, entries, key[, owners]) takes 3 or 4 arguments");
        return NULL;
    }
    Mine mine;
    if (read_sketch(args[0], &mine) < 0)
        return NULL;
    PyObject *entries = args[1];
    if (!PyBytes_Check(entries) || PyBytes_GET_SIZE(entries) % ENTRY_BYTES != 0) {
        PyErr_SetString(PyExc_ValueError, "entries are 196 bytes each");
        return NULL;
    }
    /* A key that is no uint32 is no entry's. */
    int overflow = 0;
    long long wanted = PyLong_AsLongLongAndOverflow(args[2], &overflow);
    if (wanted == -1 && PyErr_Occurred())
        return NULL;
    int any = !overflow && wanted >= 0 && wanted <= 0xFFFFFFFFLL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(entries);
    Py_ssize_t count = PyBytes_GET_SIZE(entries) / ENTRY_BYTES;
    PyObject *result = PyList_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        const unsigned char *entry = data + i * ENTRY_BYTES;
        int mine_too = any && read_u32le(entry) == (uint32_t)wanted;
        PyObject *score = PyFloat_FromDouble(mine_too ? compare(&mine, entry + KEY_BYTES) : 0.0);
        if (score == NULL)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, score);
    }
    return result;
}

/* Sorts ``values`` in place; ``spare`` holds as many. Insertion for a few, else an LSD radix
 * sort: linear, where a comparison sort of a long completion's shingles is not. */
static void sort_u32(uint32_t *values, uint32_t *spare, Py_ssize_t count)
{
    if (count <= 64) {
        for (Py_ssize_t i = 1; i < count; i++) {
            uint32_t value = values[i];
            Py_ssize_t at = i;
            for (; at > 0 && values[at - 1] > value; at--)
                values[at] = values[at - 1];
            values[at] = value;
        }
        return;
    }
    for (unsigned shift = 0; shift < 32; shift += 8) {
        Py_ssize_t starts[257] = {0};
        for (Py_ssize_t i = 0; i < count; i++)
            starts[((values[i] >> shift) & 0xFF) + 1]++;
        for (int digit = 0; digit < 256; digit++)
            starts[digit + 1] += starts[digit];
        for (Py_ssize_t i = 0; i < count; i++)
            spare[starts[(values[i] >> shift) & 0xFF]++] = values[i];
        memcpy(values, spare, (size_t)count * sizeof(uint32_t));
    }
}

/* The sorted union of ``kept`` (sorted, distinct, little-endian) and ``values`` (sorted,
 * distinct), written to ``out`` when it is not NULL; its length. A completion adds a few values
 * to a sample of hundreds: each is looked up, and the sample is copied in runs between them. */
static Py_ssize_t merge_into(const unsigned char *kept, Py_ssize_t kept_count,
                             const uint32_t *values, Py_ssize_t count, unsigned char *out)
{
    Py_ssize_t size = kept_count, from = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t low = from, high = kept_count;
        while (low < high) {
            Py_ssize_t middle = low + (high - low) / 2;
            if (read_u32le(kept + 4 * middle) < values[i])
                low = middle + 1;
            else
                high = middle;
        }
        int known = low < kept_count && read_u32le(kept + 4 * low) == values[i];
        if (out != NULL) {
            memcpy(out, kept + 4 * from, (size_t)(low - from) * 4);
            out += 4 * (low - from);
            if (!known) {
                write_u32le(out, values[i]);
                out += 4;
            }
        }
        size += !known;
        from = low;
    }
    if (out != NULL)
        memcpy(out, kept + 4 * from, (size_t)(kept_count - from) * 4);
    return size;
}

/* Whether a sample of ``count`` little-endian uint32 is sorted and distinct, as every sample
 * this module writes is. */
static int sorted_distinct(const unsigned char *kept, Py_ssize_t count)
{
    for (Py_ssize_t i = 1; i < count; i++)
        if (read_u32le(kept + 4 * (i - 1)) >= read_u32le(kept + 4 * i))
            return 0;
    return 1;
}

/* progress.py: _merge_many. The sorted, distinct union of ``sample`` (sorted distinct
 * little-endian uint32) and ``hashes`` (a 1-d buffer of native uint32), as little-endian bytes,
 * and how many distinct values ``hashes`` held. None when ``sample`` is not sorted and distinct
 * (a corrupt state): the numpy code then decides. */
static PyObject *native_merge(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "merge(sample, hashes) takes 2 arguments");
        return NULL;
    }
    PyObject *sample = args[0];
    if (!PyBytes_Check(sample) || PyBytes_GET_SIZE(sample) % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "a sample is little-endian uint32");
        return NULL;
    }
    const unsigned char *kept = (const unsigned char *)PyBytes_AS_STRING(sample);
    Py_ssize_t kept_count = PyBytes_GET_SIZE(sample) / 4;
    if (!sorted_distinct(kept, kept_count))
        Py_RETURN_NONE;

    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_STRIDED_RO | PyBUF_FORMAT) < 0)
        return NULL;
    const char *format = view.format == NULL ? "B" : view.format;
    if (view.ndim != 1 || view.itemsize != 4 ||
        (strcmp(format, "I") != 0 && strcmp(format, "=I") != 0 && strcmp(format, "@I") != 0)) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "hashes are a 1-d array of uint32");
        return NULL;
    }
    Py_ssize_t count = view.shape[0];
    if (count > PY_SSIZE_T_MAX / 8) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint32_t stack_values[2 * STACK_WORDS];
    uint32_t *values = stack_values;
    if (count > STACK_WORDS) {
        values = PyMem_Malloc((size_t)count * 2 * sizeof(uint32_t));
        if (values == NULL) {
            PyBuffer_Release(&view);
            return PyErr_NoMemory();
        }
    }
    for (Py_ssize_t i = 0; i < count; i++)
        memcpy(&values[i], (const char *)view.buf + i * view.strides[0], sizeof(uint32_t));
    PyBuffer_Release(&view);
    sort_u32(values, values + count, count);
    Py_ssize_t distinct = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if (distinct == 0 || values[i] != values[distinct - 1])
            values[distinct++] = values[i];

    /* Counted first, so the bytes are made at their size. */
    Py_ssize_t size = merge_into(kept, kept_count, values, distinct, NULL);
    PyObject *merged = PyBytes_FromStringAndSize(NULL, size * 4);
    PyObject *number = merged == NULL ? NULL : PyLong_FromSsize_t(distinct);
    PyObject *result = NULL;
    if (number != NULL) {
        merge_into(kept, kept_count, values, distinct, (unsigned char *)PyBytes_AS_STRING(merged));
        result = PyTuple_Pack(2, merged, number);
    }
    Py_XDECREF(merged);
    Py_XDECREF(number);
    if (values != stack_values)
        PyMem_Free(values);
    return result;
}

/* -- one completion's step of each text detector ------------------------------------------
 *
 * cycle.py, similarity.py and progress.py hold the reference in Python, used without this
 * extension; these functions compute the same states from the same inputs (tests/detectors/
 * test_native.py compares them on random tasks), so that a long task's completion costs a few
 * calls here rather than a few dozen Python functions. The trip itself, and its sentence, stay
 * in Python: these return the figures it is decided by. */

#define MAX_PERIOD 6 /* cycle.py */

/* A Python int that is a uint32 (an agent's key): 1, or 0 when it is none (no entry's). */
static int read_key(PyObject *value, uint32_t *key)
{
    int overflow = 0;
    long long wanted = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (wanted == -1 && PyErr_Occurred())
        return -1;
    if (overflow || wanted < 0 || wanted > 0xFFFFFFFFLL)
        return 0;
    *key = (uint32_t)wanted;
    return 1;
}

static int read_entries(PyObject *entries, Py_ssize_t *count)
{
    if (!PyBytes_Check(entries) || PyBytes_GET_SIZE(entries) % ENTRY_BYTES != 0) {
        PyErr_SetString(PyExc_ValueError, "entries are 196 bytes each");
        return -1;
    }
    *count = PyBytes_GET_SIZE(entries) / ENTRY_BYTES;
    return 0;
}

/* What both window steps read first: the window's entries, the agent's key (``*keyed`` 0 when it
 * is no uint32, so no entry's) and the new output's sketch. 0, or -1 with an error set. */
static int read_window(PyObject *recent, PyObject *key_object, PyObject *sketch, Py_ssize_t *count,
                       uint32_t *key, int *keyed, Mine *mine)
{
    if (read_entries(recent, count) < 0)
        return -1;
    *key = 0;
    *keyed = read_key(key_object, key);
    if (*keyed < 0)
        return -1;
    return read_sketch(sketch, mine);
}

/* The last ``keep`` entries of ``entries`` followed by (key, sketch), as new bytes. */
static PyObject *pushed(PyObject *entries, Py_ssize_t count, Py_ssize_t keep, uint32_t key,
                        PyObject *sketch)
{
    if (keep > count)
        keep = count;
    if (keep < 0)
        keep = 0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (keep + 1) * ENTRY_BYTES);
    if (out == NULL)
        return NULL;
    unsigned char *to = (unsigned char *)PyBytes_AS_STRING(out);
    memcpy(to, PyBytes_AS_STRING(entries) + (count - keep) * ENTRY_BYTES, (size_t)keep * ENTRY_BYTES);
    to += keep * ENTRY_BYTES;
    write_u32le(to, key);
    memcpy(to + KEY_BYTES, PyBytes_AS_STRING(sketch), BAG_BYTES);
    return out;
}

/* cycle.py: observe_shingles past its checks. cycle_step(recent, runs, key, sketch,
 * similarity) -> (recent, runs), runs None when no period continues. */
static PyObject *native_cycle_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "cycle_step(recent, runs, key, sketch, similarity) takes 5 arguments");
        return NULL;
    }
    PyObject *recent = args[0], *runs = args[1], *sketch = args[3];
    Py_ssize_t count;
    uint32_t key;
    int keyed;
    Mine mine;
    if (read_window(recent, args[2], sketch, &count, &key, &keyed, &mine) < 0)
        return NULL;
    if (!PyTuple_Check(runs) || PyTuple_GET_SIZE(runs) != MAX_PERIOD) {
        PyErr_SetString(PyExc_ValueError, "runs are a tuple of 6 ints");
        return NULL;
    }
    double similarity = PyFloat_AsDouble(args[4]);
    if (similarity == -1.0 && PyErr_Occurred())
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(recent);
    long long next[MAX_PERIOD];
    int any = 0;
    for (int period = 1; period <= MAX_PERIOD; period++) {
        Py_ssize_t back = count - period;
        int continues = 0;
        if (keyed && back >= 0 && read_u32le(data + back * ENTRY_BYTES) == key)
            continues = compare(&mine, data + back * ENTRY_BYTES + KEY_BYTES) >= similarity;
        long long run = 0;
        if (continues) {
            run = PyLong_AsLongLong(PyTuple_GET_ITEM(runs, period - 1));
            if (run == -1 && PyErr_Occurred())
                return NULL;
            run += run < LLONG_MAX; /* a run that long has long since tripped */
        }
        next[period - 1] = run;
        any |= run != 0;
    }
    PyObject *kept = pushed(recent, count, MAX_PERIOD - 1, keyed ? key : 0, sketch);
    if (kept == NULL)
        return NULL;
    if (!any)
        return Py_BuildValue("(NO)", kept, Py_None);
    PyObject *counted = PyTuple_New(MAX_PERIOD);
    for (int i = 0; counted != NULL && i < MAX_PERIOD; i++) {
        PyObject *run = PyLong_FromLongLong(next[i]);
        if (run == NULL)
            Py_CLEAR(counted);
        else
            PyTuple_SET_ITEM(counted, i, run);
    }
    if (counted == NULL) {
        Py_DECREF(kept);
        return NULL;
    }
    return Py_BuildValue("(NN)", kept, counted);
}

/* A completion's shingles: a 1-d buffer of native uint32 (numpy's, any strides). 0, or -1 with
 * an error set; release ``view`` after a 0. */
static int open_hashes(PyObject *object, Py_buffer *view)
{
    if (PyObject_GetBuffer(object, view, PyBUF_STRIDED_RO | PyBUF_FORMAT) < 0)
        return -1;
    const char *format = view->format == NULL ? "B" : view->format;
    if (view->ndim != 1 || view->itemsize != 4 ||
        (strcmp(format, "I") != 0 && strcmp(format, "=I") != 0 && strcmp(format, "@I") != 0)) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "hashes are a 1-d array of uint32");
        return -1;
    }
    return 0;
}

/* The first ``count`` hashes of ``view`` in ``stack`` (room for 2 * STACK_WORDS) or in memory
 * allocated here (then ``*heap``, to free), with as much room again past them for sorting. */
static uint32_t *copy_hashes(const Py_buffer *view, Py_ssize_t count, uint32_t *stack, void **heap)
{
    uint32_t *values = stack;
    *heap = NULL;
    if (count > STACK_WORDS) {
        if (count > PY_SSIZE_T_MAX / 8) {
            PyErr_NoMemory();
            return NULL;
        }
        *heap = PyMem_Malloc((size_t)count * 2 * sizeof(uint32_t));
        if (*heap == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        values = *heap;
    }
    for (Py_ssize_t i = 0; i < count; i++)
        memcpy(&values[i], (const char *)view->buf + i * view->strides[0], sizeof(uint32_t));
    return values;
}

static Py_ssize_t count_distinct(uint32_t *values, Py_ssize_t count)
{
    sort_u32(values, values + count, count);
    Py_ssize_t distinct = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        distinct += distinct == 0 || values[i] != values[i - 1];
    return distinct;
}

/* shingles.py: Shingles.at_least. Whether the shingles hold at least ``wanted`` distinct
 * values; the first 2 * ``wanted`` almost always tell, without sorting a long completion's
 * shingles. 1, 0, or -1 with an error set. */
static int distinct_at_least(const Py_buffer *view, Py_ssize_t wanted)
{
    Py_ssize_t count = view->shape[0];
    if (count < wanted)
        return 0;
    if (wanted <= 1)
        return 1;
    uint32_t stack[2 * STACK_WORDS];
    void *heap;
    Py_ssize_t head = count / 2 < wanted ? count : 2 * wanted;
    for (;;) {
        uint32_t *values = copy_hashes(view, head, stack, &heap);
        if (values == NULL)
            return -1;
        Py_ssize_t distinct = count_distinct(values, head);
        PyMem_Free(heap);
        if (distinct >= wanted || head == count)
            return distinct >= wanted;
        head = count;
    }
}

/* similarity.py: observe_shingles past its checks. near_step(recent, key, sketch, shingles,
 * window, similarity, min_shingles) -> (recent, repeats, max_similarity), or None when the
 * output has too few distinct shingles to compare (the state is left as it is). ``repeats``
 * counts this output and the agent's earlier ones in the window at least ``similarity`` like
 * it; ``max_similarity`` is the highest similarity to them (0.0 without any). */
static PyObject *native_near_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "near_step(recent, key, sketch, shingles, window, similarity, min_shingles) takes 7 arguments");
        return NULL;
    }
    PyObject *recent = args[0], *sketch = args[2];
    Py_ssize_t count;
    uint32_t key;
    int keyed;
    Mine mine;
    if (read_window(recent, args[1], sketch, &count, &key, &keyed, &mine) < 0)
        return NULL;
    Py_ssize_t window = PyLong_AsSsize_t(args[4]);
    if (window == -1 && PyErr_Occurred())
        return NULL;
    double similarity = PyFloat_AsDouble(args[5]);
    if (similarity == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t wanted = PyLong_AsSsize_t(args[6]);
    if (wanted == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (open_hashes(args[3], &view) < 0)
        return NULL;
    int enough = distinct_at_least(&view, wanted);
    PyBuffer_Release(&view);
    if (enough < 0)
        return NULL;
    if (!enough)
        Py_RETURN_NONE;
    /* The window counts this output, as the exact-repeat detector's does. */
    Py_ssize_t dropped = count - window + 1;
    if (dropped < 0)
        dropped = 0;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(recent);
    long repeats = 1;
    double highest = 0.0;
    int compared = 0;
    for (Py_ssize_t i = dropped; keyed && i < count; i++) {
        if (read_u32le(data + i * ENTRY_BYTES) != key)
            continue;
        double score = compare(&mine, data + i * ENTRY_BYTES + KEY_BYTES);
        repeats += score >= similarity;
        highest = !compared || score > highest ? score : highest;
        compared = 1;
    }
    PyObject *kept = pushed(recent, count, count - dropped, keyed ? key : 0, sketch);
    if (kept == NULL)
        return NULL;
    return Py_BuildValue("(Nld)", kept, repeats, highest);
}

/* progress.py: observe_shingles past its checks. progress_step(threshold, sample, recent,
 * shingles, sample_size, completions) -> (threshold, sample, recent, new, sampled): the new
 * state, and the new and sampled shingles its recent outputs add up to. None when the sample
 * is not sorted and distinct (a corrupt state): the Python code then decides. */
static PyObject *native_progress_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "progress_step(threshold, sample, recent, shingles, sample_size, completions) takes 6 arguments");
        return NULL;
    }
    PyObject *sample = args[1], *recent = args[2];
    unsigned long long threshold = PyLong_AsUnsignedLongLong(args[0]);
    if (threshold == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t size = PyLong_AsSsize_t(args[4]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t completions = PyLong_AsSsize_t(args[5]);
    if (completions == -1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_Check(sample) || !PyBytes_Check(recent) || size < 0 || completions < 1) {
        PyErr_SetString(PyExc_TypeError, "progress_step(): a bytes sample and recent pairs");
        return NULL;
    }
    if (PyBytes_GET_SIZE(sample) % 4 != 0 || PyBytes_GET_SIZE(recent) % 4 != 0)
        Py_RETURN_NONE; /* not a state this module wrote: the Python code decides */
    const unsigned char *kept = (const unsigned char *)PyBytes_AS_STRING(sample);
    Py_ssize_t kept_count = PyBytes_GET_SIZE(sample) / 4;
    if (!sorted_distinct(kept, kept_count))
        Py_RETURN_NONE;
    if (kept_count > size) { /* a rule lowered the sample size for this agent */
        threshold = read_u32le(kept + 4 * size);
        kept_count = size;
    }

    Py_buffer view;
    if (open_hashes(args[3], &view) < 0)
        return NULL;
    Py_ssize_t count = view.shape[0];
    uint32_t stack_values[2 * STACK_WORDS];
    void *heap;
    uint32_t *values = copy_hashes(&view, count, stack_values, &heap);
    PyBuffer_Release(&view);
    if (values == NULL)
        return NULL;
    Py_ssize_t below = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if ((unsigned long long)values[i] < threshold)
            values[below++] = values[i];
    sort_u32(values, values + below, below);
    Py_ssize_t distinct = 0;
    for (Py_ssize_t i = 0; i < below; i++)
        if (distinct == 0 || values[i] != values[distinct - 1])
            values[distinct++] = values[i];

    PyObject *new_sample = NULL;
    Py_ssize_t size_after = merge_into(kept, kept_count, values, distinct, NULL);
    Py_ssize_t added = size_after - kept_count;
    if (added) {
        Py_ssize_t merged_count = size_after < size ? size_after : size;
        unsigned char *merged = PyMem_Malloc((size_t)(size_after > 0 ? size_after : 1) * 4);
        if (merged == NULL) {
            PyMem_Free(heap);
            return PyErr_NoMemory();
        }
        merge_into(kept, kept_count, values, distinct, merged);
        if (size_after > size)
            threshold = read_u32le(merged + 4 * size);
        new_sample = PyBytes_FromStringAndSize((const char *)merged, merged_count * 4);
        PyMem_Free(merged);
    } else if (kept_count == PyBytes_GET_SIZE(sample) / 4) {
        new_sample = Py_NewRef(sample);
    } else {
        new_sample = PyBytes_FromStringAndSize((const char *)kept, kept_count * 4);
    }
    PyMem_Free(heap);
    if (new_sample == NULL)
        return NULL;

    /* The pair of this output appended, the last ``completions`` kept. */
    Py_ssize_t pairs = PyBytes_GET_SIZE(recent) / 4 + 1;
    Py_ssize_t keep = pairs < completions ? pairs : completions;
    PyObject *new_recent = PyBytes_FromStringAndSize(NULL, keep * 4);
    if (new_recent == NULL) {
        Py_DECREF(new_sample);
        return NULL;
    }
    unsigned char *to = (unsigned char *)PyBytes_AS_STRING(new_recent);
    memcpy(to, PyBytes_AS_STRING(recent) + (pairs - keep) * 4, (size_t)(keep - 1) * 4);
    uint32_t new_count = added < 0xFFFF ? (uint32_t)added : 0xFFFF;
    uint32_t sampled = distinct < 0xFFFF ? (uint32_t)distinct : 0xFFFF;
    to[4 * (keep - 1)] = (unsigned char)new_count;
    to[4 * (keep - 1) + 1] = (unsigned char)(new_count >> 8);
    to[4 * (keep - 1) + 2] = (unsigned char)sampled;
    to[4 * (keep - 1) + 3] = (unsigned char)(sampled >> 8);
    long long new_sum = 0, sampled_sum = 0;
    for (Py_ssize_t i = 0; i < keep; i++) {
        new_sum += (long long)to[4 * i] | (long long)to[4 * i + 1] << 8;
        sampled_sum += (long long)to[4 * i + 2] | (long long)to[4 * i + 3] << 8;
    }
    return Py_BuildValue("(KNNLL)", threshold, new_sample, new_recent, new_sum, sampled_sum);
}

static PyMethodDef methods[] = {
    {"shingle", (PyCFunction)(void (*)(void))native_shingle, METH_FASTCALL,
     "shingle(text, fold, content, limit) -> (shingles, sketch)"},
    {"similarities", (PyCFunction)(void (*)(void))native_similarities, METH_FASTCALL,
     "similarities(sketch, others) -> list of floats"},
    {"scores", (PyCFunction)(void (*)(void))native_scores, METH_FASTCALL,
     "scores(sketch, entries, key[, owners]) -> list of floats"},
    {"merge", (PyCFunction)(void (*)(void))native_merge, METH_FASTCALL,
     "merge(sample, hashes) -> (merged, distinct) or None"},
    {"cycle_step", (PyCFunction)(void (*)(void))native_cycle_step, METH_FASTCALL,
     "cycle_step(recent, runs, key, sketch, similarity) -> (recent, runs or None)"},
    {"near_step", (PyCFunction)(void (*)(void))native_near_step, METH_FASTCALL,
     "near_step(recent, key, sketch, shingles, window, similarity, min_shingles) -> "
     "(recent, repeats, max_similarity) or None"},
    {"progress_step", (PyCFunction)(void (*)(void))native_progress_step, METH_FASTCALL,
     "progress_step(threshold, sample, recent, shingles, sample_size, completions) -> "
     "(threshold, sample, recent, new, sampled) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "proxy.detectors._native",
    "The content detectors' shingling and sketch similarity in C (shingles.py, bag.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModule_Create(&module_def);
}
