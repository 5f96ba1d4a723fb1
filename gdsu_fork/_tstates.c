/* Per-thread trace functions on every thread of the interpreter, for the freeze on 3.11.
 *
 * Why C: a walk over the interpreter's thread states is only safe while nothing can free one.
 * A thread state is freed when its thread ends, and every ordinary path that frees one holds
 * the GIL.  Walked from Python (ctypes), bytecode runs between two steps and the GIL may pass
 * to a thread that ends: the walk then follows a freed pointer (it crashed the update thread
 * on 3.11).  `_PyEval_SetTrace` is no better in a walk: it runs audit hooks and drops the old
 * trace object, whose finalizer may run Python and release the GIL.
 *
 * So each function here does its whole walk in C holding the GIL, and runs no Python code
 * during it: no audit hook (raised once, before the walk), no reference dropped (deferred to
 * after the walk), no Python allocation (the collector could run finalizers).  Nothing is
 * kept by pointer from one call to the next: what a thread had before is remembered by its
 * ident and the unique id of its thread state.
 *
 * Left out: C code that deletes a thread state with PyThreadState_Delete after releasing the
 * GIL (allowed by the C API, done by no CPython path and by no common extension) could free one
 * during a walk; the interpreter's head lock that would exclude it is internal.
 *
 * On 3.12+ the freeze uses sys.monitoring; this module then builds empty.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x030C0000
#define HAVE_TSTATES 1
#endif

#ifdef HAVE_TSTATES

/* What a thread had before we set our trace function on it. */
typedef struct {
    unsigned long ident;
    uint64_t uid;      /* PyThreadState.id: unique in the interpreter, idents are reused */
    Py_tracefunc func;
    PyObject *obj;     /* strong reference, moved out of the thread state */
} Saved;

static Saved *saved = NULL;
static Py_ssize_t n_saved = 0, cap_saved = 0;

/* References to drop once a walk is over (dropping one may run Python). */
typedef struct {
    PyObject **items;
    Py_ssize_t n, cap;
} Drops;

static void
drop_later(Drops *d, PyObject *obj)
{
    if (obj == NULL) {
        return;
    }
    if (d->n == d->cap) {
        Py_ssize_t cap = d->cap ? 2 * d->cap : 16;
        PyObject **items = PyMem_RawRealloc(d->items, cap * sizeof(PyObject *));
        if (items == NULL) {
            return;  /* out of memory: leak the reference rather than drop it mid-walk */
        }
        d->items = items;
        d->cap = cap;
    }
    d->items[d->n++] = obj;
}

static void
drop_now(Drops *d)
{
    for (Py_ssize_t i = 0; i < d->n; i++) {
        Py_DECREF(d->items[i]);
    }
    PyMem_RawFree(d->items);
    d->items = NULL;
    d->n = d->cap = 0;
}

static Saved *
find_saved(PyThreadState *ts)
{
    for (Py_ssize_t i = 0; i < n_saved; i++) {
        if (saved[i].ident == ts->thread_id && saved[i].uid == ts->id) {
            return &saved[i];
        }
    }
    return NULL;
}

static Saved *
new_saved(void)
{
    if (n_saved == cap_saved) {
        Py_ssize_t cap = cap_saved ? 2 * cap_saved : 64;
        Saved *grown = PyMem_RawRealloc(saved, cap * sizeof(Saved));
        if (grown == NULL) {
            return NULL;
        }
        saved = grown;
        cap_saved = cap;
    }
    return &saved[n_saved++];
}

/* As 3.11's _PyThreadState_UpdateTracingState (an internal inline function). */
static void
update_tracing(PyThreadState *ts)
{
    int on = ts->tracing == 0 && (ts->c_tracefunc != NULL || ts->c_profilefunc != NULL);
    ts->cframe->use_tracing = on ? 255 : 0;
}

/* Our trace function: calls obj(frame, what), as sys.settrace's trampoline calls its function. */
static int
trampoline(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)arg;
    PyObject *event = PyLong_FromLong(what);  /* a cached small int */
    if (event == NULL) {
        return -1;
    }
    Py_INCREF(obj);  /* a disarm in another thread may drop the thread state's reference */
    PyObject *res = PyObject_CallFunctionObjArgs(obj, (PyObject *)frame, event, NULL);
    Py_DECREF(obj);
    Py_DECREF(event);
    if (res == NULL) {
        return -1;
    }
    Py_DECREF(res);
    return 0;
}

static int
wanted(const unsigned long *idents, Py_ssize_t n, unsigned long ident)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (idents[i] == ident) {
            return 1;
        }
    }
    return 0;
}

PyDoc_STRVAR(arm_doc,
"arm(callback, exclude, only=None) -> int\n\n"
"Set our trace function, calling callback(frame, event), on every thread of the\n"
"interpreter but the one with ident `exclude` (given `only`, an iterable of idents: on\n"
"those threads only), remembering what each had. Returns how many were newly armed.");

static PyObject *
arm(PyObject *module, PyObject *args)
{
    PyObject *callback, *only = Py_None;
    unsigned long exclude;
    if (!PyArg_ParseTuple(args, "Ok|O:arm", &callback, &exclude, &only)) {
        return NULL;
    }
    if (!PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "arm: callback must be callable");
        return NULL;
    }
    /* Everything that may run Python comes before the walk. */
    unsigned long *idents = NULL;
    Py_ssize_t n_idents = -1;
    if (only != Py_None) {
        PyObject *seq = PySequence_Fast(only, "arm: only must be an iterable of thread idents");
        if (seq == NULL) {
            return NULL;
        }
        n_idents = PySequence_Fast_GET_SIZE(seq);
        idents = PyMem_RawMalloc((n_idents + 1) * sizeof(unsigned long));
        if (idents == NULL) {
            Py_DECREF(seq);
            return PyErr_NoMemory();
        }
        for (Py_ssize_t i = 0; i < n_idents && !PyErr_Occurred(); i++) {
            idents[i] = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        }
        Py_DECREF(seq);
        if (PyErr_Occurred()) {
            PyMem_RawFree(idents);
            return NULL;
        }
    }
    if (PySys_Audit("sys.settrace", NULL) < 0) {
        PyMem_RawFree(idents);
        return NULL;
    }

    /* The walk: no Python code from here to its end. */
    Drops drops = {NULL, 0, 0};
    Py_ssize_t armed = 0;
    int nomem = 0;
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ts->thread_id == exclude || (idents && !wanted(idents, n_idents, ts->thread_id))) {
            continue;
        }
        if (ts->c_tracefunc == trampoline) {
            if (ts->c_traceobj != callback) {
                drop_later(&drops, ts->c_traceobj);
                Py_INCREF(callback);
                ts->c_traceobj = callback;
            }
            continue;
        }
        /* An entry left from earlier in the window: the thread has replaced our function. */
        Saved *s = find_saved(ts);
        if (s != NULL) {
            drop_later(&drops, s->obj);
        }
        else if ((s = new_saved()) == NULL) {
            nomem = 1;
            continue;
        }
        s->ident = ts->thread_id;
        s->uid = ts->id;
        s->func = ts->c_tracefunc;
        s->obj = ts->c_traceobj;
        Py_INCREF(callback);
        ts->c_tracefunc = trampoline;
        ts->c_traceobj = callback;
        update_tracing(ts);
        armed++;
    }
    /* The walk is over. */
    PyMem_RawFree(idents);
    drop_now(&drops);
    if (nomem) {
        return PyErr_NoMemory();
    }
    return PyLong_FromSsize_t(armed);
}

PyDoc_STRVAR(disarm_doc,
"disarm() -> int\n\n"
"Give every thread that has our trace function back what it had before; forget what\n"
"was remembered for threads that are gone. Returns how many were disarmed.");

static PyObject *
disarm(PyObject *module, PyObject *unused)
{
    Drops drops = {NULL, 0, 0};
    Py_ssize_t count = 0;
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (ts->c_tracefunc != trampoline) {
            continue;
        }
        drop_later(&drops, ts->c_traceobj);
        Saved *s = find_saved(ts);
        if (s != NULL) {
            ts->c_tracefunc = s->func;
            ts->c_traceobj = s->obj;
            *s = saved[--n_saved];
        }
        else {
            ts->c_tracefunc = NULL;
            ts->c_traceobj = NULL;
        }
        update_tracing(ts);
        count++;
    }
    /* Threads that ended, or replaced our function themselves: their old trace goes. */
    for (Py_ssize_t i = 0; i < n_saved; i++) {
        drop_later(&drops, saved[i].obj);
    }
    n_saved = 0;
    /* The walk is over. */
    drop_now(&drops);
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(hooks_doc,
"hooks() -> list[tuple[int, bool, bool, bool]]\n\n"
"(ident, has a trace function, has a profile function, the trace function is ours)\n"
"for every thread of the interpreter.");

typedef struct {
    unsigned long ident;
    char trace, profile, ours;
} Seen;

static PyObject *
hooks(PyObject *module, PyObject *unused)
{
    Seen *seen = NULL;
    Py_ssize_t n = 0, cap = 0;
    int nomem = 0;
    PyInterpreterState *interp = PyInterpreterState_Get();
    for (PyThreadState *ts = PyInterpreterState_ThreadHead(interp); ts != NULL;
         ts = PyThreadState_Next(ts)) {
        if (n == cap) {
            Py_ssize_t grown_cap = cap ? 2 * cap : 64;
            Seen *grown = PyMem_RawRealloc(seen, grown_cap * sizeof(Seen));
            if (grown == NULL) {
                nomem = 1;
                break;
            }
            seen = grown;
            cap = grown_cap;
        }
        seen[n].ident = ts->thread_id;
        seen[n].trace = ts->c_tracefunc != NULL;
        seen[n].profile = ts->c_profilefunc != NULL;
        seen[n].ours = ts->c_tracefunc == trampoline;
        n++;
    }
    /* The walk is over: Python objects may be made now. */
    PyObject *out = nomem ? PyErr_NoMemory() : PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *item = Py_BuildValue("(kOOO)", seen[i].ident,
                                       seen[i].trace ? Py_True : Py_False,
                                       seen[i].profile ? Py_True : Py_False,
                                       seen[i].ours ? Py_True : Py_False);
        if (item == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, item);
    }
    PyMem_RawFree(seen);
    return out;
}

static PyMethodDef methods[] = {
    {"arm", arm, METH_VARARGS, arm_doc},
    {"disarm", disarm, METH_NOARGS, disarm_doc},
    {"hooks", hooks, METH_NOARGS, hooks_doc},
    {NULL, NULL, 0, NULL},
};

#else  /* 3.12+: nothing to offer */

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL},
};

#endif

PyDoc_STRVAR(module_doc,
"Per-thread trace functions set in one C walk over the thread states (3.11 only; empty on\n"
"3.12+, where the freeze uses sys.monitoring).");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "gdsu_fork._tstates",
    module_doc,
    -1,  /* process-wide state: one interpreter */
    methods,
};

PyMODINIT_FUNC
PyInit__tstates(void)
{
    return PyModule_Create(&module_def);
}
