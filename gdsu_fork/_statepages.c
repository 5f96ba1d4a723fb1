/* Which 4 KiB pages hold each object's own state, and which pages the process wrote since a fork.
 *
 * The engine reuses a rehearsal child's migration for every instance whose own state did not change
 * since the fork.  The write detector is the kernel's copy-on-write bookkeeping: while a sentinel
 * child still maps the pages as they were at the fork, a page this process writes gets a private copy
 * and reads as "exclusively mapped" (bit 56) in /proc/self/pagemap.  This module computes the pages
 * an object's state lives on, exactly per interpreter version, and reads pagemap for them.
 *
 * The object layouts come from CPython's own headers (the internal ones need Py_BUILD_CORE); only
 * macros and static inline functions of those headers are used, so nothing here needs a private
 * symbol of libpython.  Every function runs with the GIL held and calls no Python code.
 *
 * Overestimates are harmless (an untouched object reads as dirty), underestimates are bugs (a write
 * would be missed); where a size is not exactly known, the code takes an upper bound and says so.
 */
#define PY_SSIZE_T_CLEAN
#ifndef Py_BUILD_CORE_MODULE
#  define Py_BUILD_CORE_MODULE 1
#endif
#include <Python.h>
#include "internal/pycore_object.h"
#include "internal/pycore_dict.h"
#if PY_VERSION_HEX >= 0x030C0000
#  include "internal/pycore_long.h"
#endif
#include "internal/pycore_frame.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
#  error "_statepages knows the object layouts of CPython 3.11 to 3.13 only"
#endif
#ifdef Py_GIL_DISABLED
#  error "_statepages does not know the free-threaded object layout"
#endif

#define PAGE_SHIFT 12
#define PTR_SIZE ((uintptr_t)sizeof(PyObject *))
#define ROUND_UP(n, a) (((n) + (a) - 1) & ~((uintptr_t)(a) - 1))

/* pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PRESENT ((uint64_t)1 << 63)
#define PM_EXCLUSIVE ((uint64_t)1 << 56)

/* The keys every empty dict shares (Py_EMPTY_KEYS, static in dictobject.c): never an object's own. */
static PyDictKeysObject *empty_keys;

/* A tuple or list result is GC-tracked, and on 3.11 allocating one can run a collection on the
 * spot, finalizers (Python code) included: results are built with the collector off. */
static PyObject *
pair_no_gc(PyObject *a, PyObject *b)
{
    int enabled = PyGC_Disable();
    PyObject *t = PyTuple_Pack(2, a, b);
    if (enabled) {
        PyGC_Enable();
    }
    Py_DECREF(a);
    Py_DECREF(b);
    return t;
}

/* ---- growable output of page numbers ---------------------------------------------------------- */

typedef struct {
    uint64_t *data;
    size_t len;
    size_t cap;
} PageBuf;

static int
pagebuf_reserve(PageBuf *b, size_t extra)
{
    if (b->len + extra <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) {
        cap *= 2;
    }
    uint64_t *data = PyMem_Realloc(b->data, cap * sizeof(uint64_t));
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

/* Appends the pages of the bytes [lo, hi). */
static inline int
add_range(PageBuf *b, uintptr_t lo, uintptr_t hi)
{
    if (hi <= lo) {
        return 0;
    }
    uint64_t first = lo >> PAGE_SHIFT;
    uint64_t last = (hi - 1) >> PAGE_SHIFT;
    size_t n = (size_t)(last - first + 1);
    if (pagebuf_reserve(b, n) < 0) {
        return -1;
    }
    for (uint64_t p = first; p <= last; p++) {
        b->data[b->len++] = p;
    }
    return 0;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts and deduplicates data[start:len] in place (one object's pages). */
static void
sort_unique_tail(PageBuf *b, size_t start)
{
    uint64_t *v = b->data + start;
    size_t n = b->len - start;
    if (n < 2) {
        return;
    }
    int sorted = 1;
    for (size_t i = 1; i < n; i++) {
        if (v[i] <= v[i - 1]) {
            sorted = 0;
            break;
        }
    }
    if (sorted) {
        return;
    }
    if (n <= 16) {
        for (size_t i = 1; i < n; i++) {
            uint64_t x = v[i];
            size_t j = i;
            while (j > 0 && v[j - 1] > x) {
                v[j] = v[j - 1];
                j--;
            }
            v[j] = x;
        }
    }
    else {
        qsort(v, n, sizeof(uint64_t), cmp_u64);
    }
    size_t w = 1;
    for (size_t i = 1; i < n; i++) {
        if (v[i] != v[w - 1]) {
            v[w++] = v[i];
        }
    }
    b->len = start + w;
}

/* PyLong_AsInt is public only from 3.13 on. */
static int
as_int(PyObject *obj)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "file descriptor out of range");
        return -1;
    }
    return (int)v;
}

/* ---- byte ranges of an object's own state ------------------------------------------------------ */

typedef struct {
    uintptr_t lo[8];
    uintptr_t hi[8];
    int n;
} Ranges;

static inline void
push(Ranges *r, uintptr_t lo, uintptr_t hi)
{
    if (hi > lo && r->n < 8) {
        r->lo[r->n] = lo;
        r->hi[r->n] = hi;
        r->n++;
    }
}

#if PY_VERSION_HEX >= 0x030D0000
/* 3.13 values array: an 8-byte header (capacity, size, embedded, valid), `capacity` value slots, then
 * the insertion order, one byte per slot rounded up to a pointer (values_size_from_count). */
static inline uintptr_t
values_size(PyDictValues *values)
{
    uintptr_t cap = values->capacity;
    return (cap + 1) * PTR_SIZE + ROUND_UP(cap, PTR_SIZE);
}
#else
/* 3.11/3.12 values array: a prefix of `prefix` bytes (insertion order, used size, and the prefix size
 * itself in the last byte) before the value slots.  new_values() makes prefix = round_up(size + 2, 8)
 * for `size` slots, so size <= prefix - 2, which overshoots by up to 7 slots (and the shared keys do
 * not record `size`: their dk_usable shrinks as later instances are created).  A tighter bound on the
 * slots that can ever be written: a key's index in the shared keys `keys` is below
 * dk_nentries + dk_usable, a sum that only decreases (a new key moves one from usable to entries; a
 * new instance takes one from usable), and was this array's size when it was allocated. */
static inline void
push_values(Ranges *r, PyDictValues *values, PyDictKeysObject *keys)
{
    uintptr_t v = (uintptr_t)values;
    uintptr_t prefix = ((uint8_t *)values)[-1];
    uintptr_t slots = prefix > 2 ? prefix - 2 : SHARED_KEYS_MAX_SIZE;
    if (prefix == 0) {
        prefix = ROUND_UP(SHARED_KEYS_MAX_SIZE + 2, PTR_SIZE);
    }
    if (keys != NULL) {
        Py_ssize_t writable = keys->dk_nentries + keys->dk_usable;
        if (writable >= 0 && (uintptr_t)writable < slots) {
            slots = (uintptr_t)writable;
        }
    }
    push(r, v - prefix, v + slots * PTR_SIZE);
}

/* The shared keys an instance's values are indexed by (a materialized dict takes them along). */
static inline PyDictKeysObject *
cached_keys(PyTypeObject *tp)
{
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        return NULL;
    }
    return ((PyHeapTypeObject *)tp)->ht_cached_keys;
}
#endif

/* A combined table's keys object: header, index table, entries (new_keys_object). */
static inline uintptr_t
keys_size(PyDictKeysObject *keys)
{
    uintptr_t entry = DK_IS_UNICODE(keys) ? sizeof(PyDictUnicodeEntry) : sizeof(PyDictKeyEntry);
    uintptr_t usable = (((uintptr_t)1 << keys->dk_log2_size) << 1) / 3; /* USABLE_FRACTION */
    return sizeof(PyDictKeysObject) + ((uintptr_t)1 << keys->dk_log2_index_bytes) + entry * usable;
}

/* The table of a dict: its own keys if combined, its values if split.  A split dict's keys are the
 * class's shared keys: adding a key there changes no instance's state by itself (the instance's
 * values, insertion order included, change too).  `inline_values` are values already counted as part
 * of the owning object's block (3.13). */
static inline void
push_dict_table(Ranges *r, PyDictObject *d, PyDictValues *inline_values)
{
    if (d->ma_values != NULL) {
        if (d->ma_values == inline_values) {
            return;
        }
#if PY_VERSION_HEX >= 0x030D0000
        push(r, (uintptr_t)d->ma_values, (uintptr_t)d->ma_values + values_size(d->ma_values));
#else
        push_values(r, d->ma_values, d->ma_keys);
#endif
    }
    else if (d->ma_keys != NULL && d->ma_keys != empty_keys) {
        push(r, (uintptr_t)d->ma_keys, (uintptr_t)d->ma_keys + keys_size(d->ma_keys));
    }
}

/* An instance's __dict__: the dict object with its pre-header (GC head), and its table. */
static inline void
push_instance_dict(Ranges *r, PyObject *dict, PyDictValues *inline_values)
{
    if (dict == NULL || !PyDict_Check(dict)) {
        return;
    }
    PyTypeObject *tp = Py_TYPE(dict);
    uintptr_t d = (uintptr_t)dict;
    push(r, d - _PyType_PreHeaderSize(tp), d + (uintptr_t)tp->tp_basicsize);
    push_dict_table(r, (PyDictObject *)dict, inline_values);
}

/* Which out-of-line storage an object's type has (the builtin containers and their subclasses). */
enum { KIND_NONE, KIND_LIST, KIND_DICT, KIND_STR, KIND_SET, KIND_BYTEARRAY, KIND_GEN, KIND_FRAME };

static int
type_kind(PyTypeObject *tp)
{
    if (PyType_FastSubclass(tp, Py_TPFLAGS_LIST_SUBCLASS)) {
        return KIND_LIST;
    }
    if (PyType_FastSubclass(tp, Py_TPFLAGS_DICT_SUBCLASS)) {
        return KIND_DICT;
    }
    if (PyType_FastSubclass(tp, Py_TPFLAGS_UNICODE_SUBCLASS)) {
        return KIND_STR;
    }
    if (PyType_IsSubtype(tp, &PySet_Type) || PyType_IsSubtype(tp, &PyFrozenSet_Type)) {
        return KIND_SET;
    }
    if (PyType_IsSubtype(tp, &PyByteArray_Type)) {
        return KIND_BYTEARRAY;
    }
    if (tp == &PyGen_Type || tp == &PyCoro_Type || tp == &PyAsyncGen_Type) {
        return KIND_GEN;
    }
    if (tp == &PyFrame_Type) {
        return KIND_FRAME;
    }
    return KIND_NONE;
}

/* The kind of the last type seen: most lists of objects are runs of one class.  Valid within one
 * state_pages() call, which runs no Python code while the objects keep their types alive. */
typedef struct {
    PyTypeObject *tp;
    int kind;
} KindCache;

static inline int
cached_kind(KindCache *c, PyTypeObject *tp)
{
    if (c->tp != tp) {
        c->tp = tp;
        c->kind = type_kind(tp);
    }
    return c->kind;
}

/* Out-of-line storage of the builtin containers (and of their subclasses' instances). */
static inline void
push_container_storage(Ranges *r, PyObject *obj, int kind)
{
    switch (kind) {
    case KIND_LIST: {
        PyListObject *l = (PyListObject *)obj;
        /* list.sort() detaches the items and sets allocated to -1 while it runs. */
        if (l->ob_item != NULL && l->allocated > 0) {
            push(r, (uintptr_t)l->ob_item, (uintptr_t)(l->ob_item + l->allocated));
        }
        break;
    }
    case KIND_DICT:
        push_dict_table(r, (PyDictObject *)obj, NULL);
        break;
    case KIND_STR:
        /* Compact strings keep their characters right after the header (not covered by
         * tp_basicsize, as str has no tp_itemsize). */
        if (PyUnicode_IS_COMPACT(obj)) {
            uintptr_t head = PyUnicode_IS_ASCII(obj) ? sizeof(PyASCIIObject)
                                                     : sizeof(PyCompactUnicodeObject);
            uintptr_t len = (uintptr_t)PyUnicode_GET_LENGTH(obj) + 1;
            push(r, (uintptr_t)obj, (uintptr_t)obj + head + len * PyUnicode_KIND(obj));
        }
        break;
    case KIND_SET: {
        PySetObject *s = (PySetObject *)obj;
        if (s->table != NULL && s->table != s->smalltable) {
            push(r, (uintptr_t)s->table, (uintptr_t)(s->table + s->mask + 1));
        }
        break;
    }
    case KIND_BYTEARRAY: {
        PyByteArrayObject *b = (PyByteArrayObject *)obj;
        if (b->ob_bytes != NULL && b->ob_alloc > 0) {
            push(r, (uintptr_t)b->ob_bytes, (uintptr_t)b->ob_bytes + (uintptr_t)b->ob_alloc);
        }
        break;
    }
    default:
        break;
    }
}

/* Bytes of the var-sized part after tp_basicsize.  The item count is ob_size, except for ints
 * (3.12+ lv_tag holds the digit count shifted; at least one digit is allocated) and for generators
 * and frames, which declare a tp_itemsize but keep no ob_size: their frame slots come from the code
 * object (3.11: locals plus stack; 3.12+: co_framesize, which counts the frame header too, an
 * overestimate by that much). */
static inline uintptr_t
code_frame_bytes(PyCodeObject *code)
{
    if (code == NULL) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030C0000
    Py_ssize_t slots = code->co_framesize;
#else
    Py_ssize_t slots = (Py_ssize_t)code->co_nlocalsplus + code->co_stacksize;
#endif
    return slots > 0 ? (uintptr_t)slots * PTR_SIZE : 0;
}

static inline PyCodeObject *
frame_code(struct _PyInterpreterFrame *f)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyCode_Check(f->f_executable) ? (PyCodeObject *)f->f_executable : NULL;
#else
    return f->f_code;
#endif
}

static inline uintptr_t
items_size(PyObject *obj, PyTypeObject *tp, int kind)
{
    if (kind == KIND_GEN) {
#if PY_VERSION_HEX >= 0x030C0000
        return code_frame_bytes(frame_code((struct _PyInterpreterFrame *)((PyGenObject *)obj)->gi_iframe));
#else
        return code_frame_bytes(((PyGenObject *)obj)->gi_code);
#endif
    }
    if (kind == KIND_FRAME) {
        /* Only a frame object that owns its data (copied in when the call ended) holds it. */
        PyFrameObject *f = (PyFrameObject *)obj;
        if (f->f_frame != (struct _PyInterpreterFrame *)f->_f_frame_data) {
            return 0;
        }
        return code_frame_bytes(frame_code(f->f_frame));
    }
    if (tp->tp_itemsize == 0) {
        return 0;
    }
    Py_ssize_t n;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyType_FastSubclass(tp, Py_TPFLAGS_LONG_SUBCLASS)) {
        n = (Py_ssize_t)_PyLong_DigitCount((PyLongObject *)obj);
    }
    else
#endif
    {
        n = Py_SIZE(obj);
        if (n < 0) {
            n = -n;
        }
    }
    if (n == 0 && PyType_FastSubclass(tp, Py_TPFLAGS_LONG_SUBCLASS)) {
        n = 1;
    }
    uintptr_t bytes = (uintptr_t)n * (uintptr_t)tp->tp_itemsize;
    /* A type of an extension that declares items but keeps no ob_size would give nonsense here:
     * no object is that large, so take the fixed part alone rather than fail. */
    return bytes > ((uintptr_t)1 << 40) ? 0 : bytes;
}

/* All byte ranges holding obj's own state. */
static void
object_ranges(PyObject *obj, Ranges *r, KindCache *kc)
{
    PyTypeObject *tp = Py_TYPE(obj);
    uintptr_t o = (uintptr_t)obj;
    /* The whole block: GC head and, with Py_TPFLAGS_PREHEADER (3.12+) / MANAGED_DICT (3.11), the
     * managed dict/values and weakref pointers before the object; the fixed part and the items. */
    int kind = cached_kind(kc, tp);
    uintptr_t lo = o - _PyType_PreHeaderSize(tp);
    uintptr_t hi = o + ROUND_UP((uintptr_t)tp->tp_basicsize + items_size(obj, tp, kind), PTR_SIZE);
    PyDictValues *inline_values = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    if (tp->tp_flags & Py_TPFLAGS_INLINE_VALUES) {
        /* 3.13 keeps the values after the fixed part; `capacity` records the size they were given
         * at allocation (the class's shared keys may have shrunk since). */
        inline_values = (PyDictValues *)(o + (uintptr_t)tp->tp_basicsize);
        uintptr_t end = (uintptr_t)inline_values + values_size(inline_values);
        if (end > hi) {
            hi = end;
        }
    }
#endif
    PyObject *dict = NULL;
    if (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT) {
#if PY_VERSION_HEX >= 0x030D0000
        dict = (PyObject *)_PyObject_ManagedDictPointer(obj)->dict;
#elif PY_VERSION_HEX >= 0x030C0000
        PyDictOrValues dorv = *_PyObject_DictOrValuesPointer(obj);
        if (_PyDictOrValues_IsValues(dorv)) {
            push_values(r, _PyDictOrValues_GetValues(dorv), cached_keys(tp));
        }
        else {
            dict = _PyDictOrValues_GetDict(dorv);
        }
#else
        PyDictValues *values = *_PyObject_ValuesPointer(obj);
        if (values != NULL) {
            push_values(r, values, cached_keys(tp));
        }
        dict = *_PyObject_ManagedDictPointer(obj);
#endif
    }
    else if (tp->tp_dictoffset != 0) {
        /* Same computation as _PyObject_ComputedDictPointer: a negative offset counts from the end
         * of the var-sized object, using the raw ob_size. */
        Py_ssize_t offset = tp->tp_dictoffset;
        if (offset < 0) {
            Py_ssize_t n = Py_SIZE(obj);
            if (n < 0) {
                n = -n;
            }
            offset += (Py_ssize_t)_PyObject_VAR_SIZE(tp, n);
        }
        if (offset > 0) {
            uintptr_t slot = o + (uintptr_t)offset;
            if (slot + PTR_SIZE > hi) {
                hi = slot + PTR_SIZE;
            }
            dict = *(PyObject **)slot;
        }
    }
    push(r, lo, hi);
    push_instance_dict(r, dict, inline_values);
    push_container_storage(r, obj, kind);
}

/* ---- state_pages ---------------------------------------------------------------------------------- */

PyDoc_STRVAR(state_pages_doc,
"state_pages(objects, /) -> tuple[bytes, bytes]\n\
\n\
For each object, the sorted unique 4 KiB page numbers of the bytes holding its own state, as two\n\
native uint64 arrays: all pages concatenated, and n+1 start offsets into them.");

#define PREFETCH_AHEAD 8

static PyObject *
state_pages(PyObject *Py_UNUSED(module), PyObject *objects)
{
    if (!PyList_Check(objects) && !PyTuple_Check(objects)) {
        PyErr_Format(PyExc_TypeError, "state_pages() takes a list or a tuple, not %.100s",
                     Py_TYPE(objects)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(objects);
    PyObject **items = PySequence_Fast_ITEMS(objects);
    PyObject *starts = PyBytes_FromStringAndSize(NULL, (n + 1) * (Py_ssize_t)sizeof(uint64_t));
    if (starts == NULL) {
        return NULL;
    }
    uint64_t *start = (uint64_t *)PyBytes_AS_STRING(starts);
    PageBuf b = {NULL, 0, 0};
    if (pagebuf_reserve(&b, (size_t)n * 4 + 16) < 0) {
        Py_DECREF(starts);
        return NULL;
    }
    KindCache kc = {NULL, KIND_NONE};
    for (Py_ssize_t i = 0; i < n; i++) {
        start[i] = b.len;
        Ranges r;
        r.n = 0;
        if (i + PREFETCH_AHEAD < n) {  /* memory latency dominates: ask early for what follows */
            const char *next = (const char *)items[i + PREFETCH_AHEAD];
            __builtin_prefetch(next - 2 * PTR_SIZE);  /* pre-header (managed dict or values) */
            __builtin_prefetch(next + PTR_SIZE);      /* its type and size */
        }
        object_ranges(items[i], &r, &kc);
        for (int k = 0; k < r.n; k++) {
            if (add_range(&b, r.lo[k], r.hi[k]) < 0) {
                PyMem_Free(b.data);
                Py_DECREF(starts);
                return NULL;
            }
        }
        sort_unique_tail(&b, (size_t)start[i]);
    }
    start[n] = b.len;
    PyObject *pages = PyBytes_FromStringAndSize((const char *)b.data,
                                                (Py_ssize_t)(b.len * sizeof(uint64_t)));
    PyMem_Free(b.data);
    if (pages == NULL) {
        Py_DECREF(starts);
        return NULL;
    }
    return pair_no_gc(pages, starts);
}

PyDoc_STRVAR(state_ranges_doc,
"state_ranges(obj, /) -> list[tuple[int, int]]\n\
\n\
The byte ranges [lo, hi) behind state_pages(), for tests and debugging.");

static PyObject *
state_ranges(PyObject *Py_UNUSED(module), PyObject *obj)
{
    Ranges r;
    r.n = 0;
    KindCache kc = {NULL, KIND_NONE};
    object_ranges(obj, &r, &kc);
    int enabled = PyGC_Disable();
    PyObject *out = PyList_New(r.n);
    for (int k = 0; out != NULL && k < r.n; k++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)r.lo[k],
                                    (unsigned long long)r.hi[k]);
        if (t == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, k, t);
    }
    if (enabled) {
        PyGC_Enable();
    }
    return out;
}

/* ---- unique pages and each entry's slot among them ------------------------------------------------ */

static int
get_u64_buffer(PyObject *obj, Py_buffer *view, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (view->len % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be packed uint64 (its length is %zd bytes)", what,
                     view->len);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(unique_pages_doc,
"unique_pages(pages, /) -> tuple[bytes, bytes]\n\
\n\
The sorted unique values of a packed uint64 array, and for each input entry the uint32 position of\n\
its value among them (so that a per-page flag array answers for every entry in one pass).");

static PyObject *
unique_pages(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    if (get_u64_buffer(arg, &view, "pages") < 0) {
        return NULL;
    }
    const uint64_t *pages = view.buf;
    size_t n = (size_t)view.len / 8;
    if (n >= UINT32_MAX) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "more than 2**32 page entries");
        return NULL;
    }
    /* LSD radix sort of entry positions by page number, 11 bits a pass, as many passes as the
     * largest page number needs (3-4 for user addresses). */
    uint32_t *order = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    uint32_t *tmp = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t));
    PyObject *slots = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * sizeof(uint32_t)));
    uint64_t *uniq = PyMem_Malloc((n ? n : 1) * sizeof(uint64_t));
    if (order == NULL || tmp == NULL || slots == NULL || uniq == NULL) {
        PyMem_Free(order);
        PyMem_Free(tmp);
        PyMem_Free(uniq);
        Py_XDECREF(slots);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint64_t maxv = 0;
    for (size_t i = 0; i < n; i++) {
        order[i] = (uint32_t)i;
        if (pages[i] > maxv) {
            maxv = pages[i];
        }
    }
    enum { BITS = 11, RADIX = 1 << BITS };
    size_t count[RADIX];
    for (int shift = 0; shift < 64 && (maxv >> shift) != 0; shift += BITS) {
        memset(count, 0, sizeof(count));
        for (size_t i = 0; i < n; i++) {
            count[(pages[i] >> shift) & (RADIX - 1)]++;
        }
        size_t sum = 0;
        for (size_t d = 0; d < RADIX; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) {
            uint32_t e = order[i];
            tmp[count[(pages[e] >> shift) & (RADIX - 1)]++] = e;
        }
        uint32_t *t = order;
        order = tmp;
        tmp = t;
    }
    uint32_t *slot = (uint32_t *)PyBytes_AS_STRING(slots);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t p = pages[order[i]];
        if (m == 0 || uniq[m - 1] != p) {
            uniq[m++] = p;
        }
        slot[order[i]] = (uint32_t)(m - 1);
    }
    PyMem_Free(order);
    PyMem_Free(tmp);
    PyBuffer_Release(&view);
    PyObject *u = PyBytes_FromStringAndSize((const char *)uniq, (Py_ssize_t)(m * sizeof(uint64_t)));
    PyMem_Free(uniq);
    if (u == NULL) {
        Py_DECREF(slots);
        return NULL;
    }
    return pair_no_gc(u, slots);
}

/* ---- pagemap -------------------------------------------------------------------------------------- */

/* Pages closer than this share one pread: reading the entries between them costs less than a
 * syscall.  A pread covers at most MAX_RUN entries. */
#define GAP_PAGES 256
#define MAX_RUN 65536

PyDoc_STRVAR(read_written_doc,
"read_written(fd, pages, /) -> bytes\n\
\n\
For each page of a sorted packed uint64 array, 1 if this process wrote it since the last fork of a\n\
process still mapping it (exclusively mapped, or not present), else 0; fd is /proc/self/pagemap.");

static PyObject *
read_written(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_written() takes exactly 2 arguments (fd, pages)");
        return NULL;
    }
    int fd = as_int(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (get_u64_buffer(args[1], &view, "pages") < 0) {
        return NULL;
    }
    const uint64_t *pages = view.buf;
    size_t n = (size_t)view.len / 8;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    uint64_t *buf = PyMem_Malloc(MAX_RUN * sizeof(uint64_t));
    if (out == NULL || buf == NULL) {
        Py_XDECREF(out);
        PyMem_Free(buf);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    uint8_t *flag = (uint8_t *)PyBytes_AS_STRING(out);
    size_t i = 0;
    while (i < n) {
        uint64_t first = pages[i];
        size_t j = i + 1;
        while (j < n && pages[j] > pages[j - 1] && pages[j] - pages[j - 1] <= GAP_PAGES
               && pages[j] - first < MAX_RUN) {
            j++;
        }
        size_t count = (size_t)(pages[j - 1] - first + 1);
        size_t want = count * sizeof(uint64_t), got = 0;
        while (got < want) {
            ssize_t k = pread(fd, (char *)buf + got, want - got,
                              (off_t)(first * sizeof(uint64_t) + got));
            if (k < 0) {
                if (errno == EINTR) {
                    continue;
                }
                PyErr_SetFromErrnoWithFilename(PyExc_OSError, "/proc/self/pagemap");
                Py_DECREF(out);
                PyMem_Free(buf);
                PyBuffer_Release(&view);
                return NULL;
            }
            if (k == 0) {
                break;
            }
            got += (size_t)k;
        }
        /* Entries past a short read (end of the address space) stay zero: not present. */
        memset((char *)buf + got, 0, want - got);
        for (size_t k = i; k < j; k++) {
            uint64_t e = buf[pages[k] - first];
            flag[k] = !(e & PM_PRESENT) || (e & PM_EXCLUSIVE);
        }
        i = j;
    }
    PyMem_Free(buf);
    PyBuffer_Release(&view);
    return out;
}

/* ---- dirty -------------------------------------------------------------------------------------- */

PyDoc_STRVAR(dirty_positions_doc,
"dirty_positions(starts, slots, flags, /) -> list[int]\n\
\n\
Positions i whose entries slots[starts[i]:starts[i+1]] (uint32 positions into flags) include a\n\
nonzero flag.");

static PyObject *
dirty_positions(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "dirty_positions() takes exactly 3 arguments (starts, slots, flags)");
        return NULL;
    }
    Py_buffer vs, vslot, vf;
    if (get_u64_buffer(args[0], &vs, "starts") < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &vslot, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&vs);
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &vf, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&vs);
        PyBuffer_Release(&vslot);
        return NULL;
    }
    PyObject *out = NULL;
    int enabled = PyGC_Disable(); /* as in pair_no_gc */
    const uint64_t *start = vs.buf;
    const uint32_t *slot = vslot.buf;
    const uint8_t *flag = vf.buf;
    size_t nstarts = (size_t)vs.len / 8, nslots = (size_t)vslot.len / 4, nflags = (size_t)vf.len;
    if (nstarts == 0 || start[nstarts - 1] != nslots || vslot.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "starts and slots do not describe the same entries");
        goto done;
    }
    for (size_t e = 0; e < nslots; e++) {
        if (slot[e] >= nflags) {
            PyErr_SetString(PyExc_ValueError, "flags is shorter than the unique pages");
            goto done;
        }
    }
    out = PyList_New(0);
    if (out == NULL) {
        goto done;
    }
    for (size_t i = 0; i + 1 < nstarts; i++) {
        uint64_t a = start[i], b = start[i + 1];
        if (a > b || b > nslots) {
            PyErr_SetString(PyExc_ValueError, "starts is not a sorted offset array");
            Py_CLEAR(out);
            goto done;
        }
        for (uint64_t e = a; e < b; e++) {
            if (flag[slot[e]]) {
                PyObject *pos = PyLong_FromSize_t(i);
                if (pos == NULL || PyList_Append(out, pos) < 0) {
                    Py_XDECREF(pos);
                    Py_CLEAR(out);
                    goto done;
                }
                Py_DECREF(pos);
                break;
            }
        }
    }
done:
    if (enabled) {
        PyGC_Enable();
    }
    PyBuffer_Release(&vs);
    PyBuffer_Release(&vslot);
    PyBuffer_Release(&vf);
    return out;
}

/* ---- sentinel ------------------------------------------------------------------------------------- */

PyDoc_STRVAR(fork_sentinel_doc,
"fork_sentinel(read_fd, /) -> int\n\
\n\
Forks a child that keeps this process's pages mapped as they are now, until read_fd reaches end of\n\
file or the forking thread dies; returns its pid.  The child runs no Python code and no at-fork\n\
hooks: it closes every other descriptor, blocks in read() and exits.");

/* Closes every descriptor but `keep`: the sentinel must not hold the program's sockets or the
 * pipe's write end open (a peer would never see the program close a connection). */
static void
close_all_but(int keep)
{
#ifdef SYS_close_range
    if ((keep == 0 || syscall(SYS_close_range, 0U, (unsigned int)keep - 1U, 0U) == 0)
        && syscall(SYS_close_range, (unsigned int)keep + 1U, ~0U, 0U) == 0) {
        return;
    }
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20) {
        max = 1 << 20;
    }
    for (int fd = 0; fd < max; fd++) {
        if (fd != keep) {
            close(fd);
        }
    }
}

static PyObject *
fork_sentinel(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int rfd = as_int(arg);
    if (rfd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (pid == 0) {
        /* Only async-signal-safe calls from here on: other threads may have held any lock. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) {
            _exit(0);
        }
        close_all_but(rfd);
        char c;
        while (read(rfd, &c, 1) < 0 && errno == EINTR) {
        }
        _exit(0);
    }
    return PyLong_FromLong((long)pid);
}

PyDoc_STRVAR(buffer_address_doc,
"buffer_address(buffer, /) -> int\n\
\n\
The address of a writable buffer's first byte (for the pagemap self-test).");

static PyObject *
buffer_address(PyObject *Py_UNUSED(module), PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    uintptr_t a = (uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong((unsigned long long)a);
}

/* ---- module ------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"state_pages", state_pages, METH_O, state_pages_doc},
    {"state_ranges", state_ranges, METH_O, state_ranges_doc},
    {"unique_pages", unique_pages, METH_O, unique_pages_doc},
    {"read_written", (PyCFunction)(void (*)(void))read_written, METH_FASTCALL, read_written_doc},
    {"dirty_positions", (PyCFunction)(void (*)(void))dirty_positions, METH_FASTCALL,
     dirty_positions_doc},
    {"fork_sentinel", fork_sentinel, METH_O, fork_sentinel_doc},
    {"buffer_address", buffer_address, METH_O, buffer_address_doc},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    /* A new empty dict points at the shared empty keys. */
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return -1;
    }
    empty_keys = ((PyDictObject *)d)->ma_keys;
    Py_DECREF(d);
    if (PyModule_AddIntConstant(module, "PAGE_SIZE", 1 << PAGE_SHIFT) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots_def[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gdsu_fork._statepages",
    .m_doc = "Pages of objects' own state, and which of them this process wrote since a fork.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots_def,
};

PyMODINIT_FUNC
PyInit__statepages(void)
{
    return PyModuleDef_Init(&moduledef);
}
