/* The commit's assignments over groups of instances (bulk.py), in C loops, the gathering of
   those groups from the listing by position, and of the affected instances from the heap
   listing by class (engine.py).

   Each is what object.__setattr__ / object.__delattr__ / object.__getattribute__ does for one
   object (PyObject_Generic{Set,Get}Attr: the class's own __setattr__ is bypassed, descriptors
   are honoured), without a Python-level call per object: the commit's hot path in the pause. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* set_all(objects: list, name: str, value) -> None: setattr on each, in order; on an error the
   objects before the failing one keep the new value (the caller undoes the whole group). */
static PyObject *
set_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "set_all(objects: list, name: str, value)");
        return NULL;
    }
    PyObject *objects = args[0];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        if (PyObject_GenericSetAttr(PyList_GET_ITEM(objects, i), args[1], args[2]) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* take_all(objects: list, name: str) -> list: each object's attribute removed, returned in
   order; all or nothing (on an error the values already taken are put back). */
static PyObject *
take_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "take_all(objects: list, name: str)");
        return NULL;
    }
    PyObject *objects = args[0], *name = args[1];
    Py_ssize_t n = PyList_GET_SIZE(objects);
    PyObject *values = PyList_New(n);
    if (values == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(objects, i);
        PyObject *value = PyObject_GenericGetAttr(obj, name);
        if (value == NULL || PyObject_GenericSetAttr(obj, name, NULL) < 0) {
            PyObject *type, *exc, *tb;
            PyErr_Fetch(&type, &exc, &tb);
            Py_XDECREF(value);
            for (Py_ssize_t j = 0; j < i; j++) {  /* put back what was taken */
                if (PyObject_GenericSetAttr(PyList_GET_ITEM(objects, j), name,
                                            PyList_GET_ITEM(values, j)) < 0) {
                    PyErr_Clear();
                }
            }
            Py_DECREF(values);
            PyErr_Restore(type, exc, tb);
            return NULL;
        }
        PyList_SET_ITEM(values, i, value);
    }
    return values;
}

/* pick(objects: list, positions, offset: int) -> list: objects[p - offset] for each p, in
   order. `positions`: a buffer of int64 (array("q"), the bulk's groups: read directly) or any
   sequence of ints. */
static PyObject *
pick_from_buffer(PyObject *objects, Py_buffer *view, Py_ssize_t offset)
{
    Py_ssize_t n = view->len / (Py_ssize_t)sizeof(long long), size = PyList_GET_SIZE(objects);
    const long long *positions = (const long long *)view->buf;
    PyObject *taken = PyList_New(n);
    if (taken == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long long at = positions[i] - offset;
        if (at < 0 || at >= size) {
            Py_DECREF(taken);
            PyErr_Format(PyExc_IndexError, "position %lld is outside the listing", positions[i]);
            return NULL;
        }
        PyList_SET_ITEM(taken, i, Py_NewRef(PyList_GET_ITEM(objects, at)));
    }
    return taken;
}

static PyObject *
pick(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "pick(objects: list, positions, offset: int)");
        return NULL;
    }
    Py_ssize_t offset = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_CheckBuffer(args[1])
        && PyObject_GetBuffer(args[1], &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
        if (view.format != NULL && view.itemsize == sizeof(long long)
            && (view.format[0] == 'q' || view.format[0] == 'l')) {
            PyObject *taken = pick_from_buffer(args[0], &view, offset);
            PyBuffer_Release(&view);
            return taken;
        }
        PyBuffer_Release(&view);  /* another item type: read it as a sequence */
    }
    PyErr_Clear();
    PyObject *positions = PySequence_Fast(args[1], "pick: positions must be a sequence of ints");
    if (positions == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(positions), size = PyList_GET_SIZE(args[0]);
    PyObject *taken = PyList_New(n);
    for (Py_ssize_t i = 0; taken != NULL && i < n; i++) {
        Py_ssize_t at = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(positions, i),
                                           PyExc_IndexError);
        if (at == -1 && PyErr_Occurred()) {
            Py_CLEAR(taken);
            break;
        }
        at -= offset;
        if (at < 0 || at >= size) {
            PyErr_Format(PyExc_IndexError, "position %zd is outside the listing", at + offset);
            Py_CLEAR(taken);
            break;
        }
        PyList_SET_ITEM(taken, i, Py_NewRef(PyList_GET_ITEM(args[0], at)));
    }
    Py_DECREF(positions);
    return taken;
}

/* of_types(objects: list, kinds: set) -> list: the objects whose exact class is in `kinds`, in
   order (the heap mark's pick of affected instances among a million objects: reading each
   object's class is a cache miss, so the loop asks for the next ones ahead). */
static PyObject *
of_types(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "of_types(objects: list, kinds: set)");
        return NULL;
    }
    PyObject *objects = args[0], *kinds = args[1];
    PyObject *found = PyList_New(0);
    if (found == NULL) {
        return NULL;
    }
    enum { AHEAD = 16 };
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        if (i + AHEAD < PyList_GET_SIZE(objects)) {
            __builtin_prefetch(PyList_GET_ITEM(objects, i + AHEAD));
        }
        PyObject *obj = PyList_GET_ITEM(objects, i);
        int hit = PySet_Contains(kinds, (PyObject *)Py_TYPE(obj));
        if (hit < 0 || (hit && PyList_Append(found, obj) < 0)) {
            Py_DECREF(found);
            return NULL;
        }
    }
    return found;
}

static PyMethodDef methods[] = {
    {"set_all", (PyCFunction)(void (*)(void))set_all, METH_FASTCALL,
     "set_all(objects, name, value): object.__setattr__(o, name, value) for each o, in C."},
    {"take_all", (PyCFunction)(void (*)(void))take_all, METH_FASTCALL,
     "take_all(objects, name) -> values: each o's attribute removed and returned; all or none."},
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL,
     "pick(objects, positions, offset) -> [objects[p - offset] for p in positions], in C."},
    {"of_types", (PyCFunction)(void (*)(void))of_types, METH_FASTCALL,
     "of_types(objects, kinds) -> [o for o in objects if type(o) in kinds], in C."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gdsu_fork._assign",
    "The commit's assignments over groups of instances, in C loops (bulk.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__assign(void)
{
    return PyModule_Create(&module);
}
