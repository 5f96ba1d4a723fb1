/* The migration's hot loop (migrate.py), in C, and Env.instance's path for plain classes.

   For each instance of a plain class (a __dict__, no slots, same layout): the blank instance of
   the new class filled by name, the policy's call, and the record of what changed in the bulk
   delta — what Migration._migrate_whole and _finish do, without the interpreter's bookkeeping around the
   policy. Anything out of the ordinary (a class without a fast plan yet, a result class not yet
   checked, a result without a plain __dict__, a group not made yet) goes back to the Python
   code, which handles that one instance and calls in again: the rules live there, this loop
   only repeats what they decided for earlier instances. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_dict, *str_append, *empty_tuple;

/* A fast plan: the tuple _ClassPlan.fast_entry() builds. */
enum { P_NEW, P_TARGET, P_DROPPED, P_POLICY, P_CHECKED, P_GROUPS, P_PAIRS, P_SIZE };

/* What became of one instance: the last two stop the loop (see run). */
enum { SKIPPED, MIGRATED, WHOLE, FINISH };

/* The blank instance of the plan's class holding the old fields it still declares; NULL with
   no exception set when the class's __new__ wants arguments or the instance has no plain
   __dict__ (the Python code then takes the instance, as env.blank does). */
static PyObject *
by_name(PyObject *plan, PyObject *old_state)
{
    PyObject *new = PyObject_CallOneArg(PyTuple_GET_ITEM(plan, P_NEW),
                                        PyTuple_GET_ITEM(plan, P_TARGET));
    if (new == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *namespace = PyObject_GetAttr(new, str_dict);
    if (namespace == NULL || !PyDict_CheckExact(namespace)) {
        Py_XDECREF(namespace);
        Py_DECREF(new);
        if (PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *dropped = PyTuple_GET_ITEM(plan, P_DROPPED);
    int failed;
    if (dropped == Py_None) {
        failed = PyDict_Update(namespace, old_state) < 0;
    }
    else {
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        failed = 0;
        while (!failed && PyDict_Next(old_state, &pos, &key, &value)) {
            int gone = PySet_Contains(dropped, key);
            failed = gone < 0 || (!gone && PyDict_SetItem(namespace, key, value) < 0);
        }
    }
    Py_DECREF(namespace);
    if (failed) {
        Py_CLEAR(new);
    }
    return new;
}

/* bulk.diff_values: the values of `result_state` that are not the old ones (by identity), a
   value the old state holds under another name as from_attr(that name); NULL with no
   exception set when nothing changed. */
static PyObject *
changed_values(PyObject *old_state, PyObject *result_state, PyObject *from_attr)
{
    PyObject *changed = NULL, *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(result_state, &pos, &key, &value)) {
        PyObject *old = PyDict_GetItemWithError(old_state, key);
        if (old == value) {
            continue;
        }
        if (old == NULL && PyErr_Occurred()) {
            goto error;
        }
        if (changed == NULL && (changed = PyDict_New()) == NULL) {
            return NULL;
        }
        PyObject *source = NULL, *old_key, *old_value;  /* the last name holding it, as a dict */
        Py_ssize_t old_pos = 0;
        while (PyDict_Next(old_state, &old_pos, &old_key, &old_value)) {
            if (old_value == value) {
                source = old_key;
            }
        }
        PyObject *entry;
        if (source == NULL) {
            entry = Py_NewRef(value);
        }
        else {  /* Python code runs: hold what the dicts lend us */
            Py_INCREF(key);
            Py_INCREF(source);
            entry = PyObject_CallOneArg(from_attr, source);
            Py_DECREF(source);
            Py_DECREF(key);
        }
        if (entry == NULL || PyDict_SetItem(changed, key, entry) < 0) {
            Py_XDECREF(entry);
            goto error;
        }
        Py_DECREF(entry);
    }
    return changed;
error:
    Py_XDECREF(changed);
    return NULL;
}

/* ---- where each instance's position goes: the bulk's groups --------------------------------- */

/* The positions being migrated: a range (the rehearsal's), an int64 buffer or any sequence. */
typedef struct {
    PyObject *sequence;
    Py_buffer view;  /* view.buf != NULL: an int64 buffer */
    long long start, step;
    int is_range;
} Positions;

static int
positions_open(Positions *p, PyObject *sequence)
{
    memset(p, 0, sizeof(*p));
    p->sequence = sequence;
    if (PyRange_Check(sequence)) {
        PyObject *start = PyObject_GetAttrString(sequence, "start");
        PyObject *step = start == NULL ? NULL : PyObject_GetAttrString(sequence, "step");
        p->start = start == NULL ? -1 : PyLong_AsLongLong(start);
        p->step = step == NULL ? -1 : PyLong_AsLongLong(step);
        Py_XDECREF(start);
        Py_XDECREF(step);
        p->is_range = 1;
        return PyErr_Occurred() ? -1 : 0;
    }
    if (PyObject_CheckBuffer(sequence)
        && PyObject_GetBuffer(sequence, &p->view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) == 0) {
        if (p->view.format != NULL && p->view.itemsize == sizeof(long long)
            && (p->view.format[0] == 'q' || p->view.format[0] == 'l')) {
            return 0;
        }
        PyBuffer_Release(&p->view);  /* another item type: read it as a sequence */
        p->view.buf = NULL;
    }
    PyErr_Clear();
    return 0;
}

static void
positions_close(Positions *p)
{
    if (p->view.buf != NULL) {
        PyBuffer_Release(&p->view);
    }
}

static int
position_at(Positions *p, Py_ssize_t i, long long *out)
{
    if (p->is_range) {
        *out = p->start + (long long)i * p->step;
        return 0;
    }
    if (p->view.buf != NULL) {
        if (i >= p->view.len / (Py_ssize_t)sizeof(long long)) {
            PyErr_SetString(PyExc_IndexError, "fewer positions than objects");
            return -1;
        }
        *out = ((const long long *)p->view.buf)[i];
        return 0;
    }
    PyObject *item = PySequence_GetItem(p->sequence, i);
    if (item == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(item);
    Py_DECREF(item);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* A group seen in this call: instances of `plan` whose result is of class `result_class` and
   which lose `removed`, with the positions appended to it since (written out by flush). */
typedef struct {
    PyObject *plan, *result_class, *removed, *group;  /* strong references */
    long long *positions;
    Py_ssize_t len, cap;
} Route;

#define MAX_ROUTES 16
#define MAX_REMOVED 32

typedef struct {
    Route items[MAX_ROUTES];
    int n;
} Routes;

/* Append the buffered positions to their groups (array.frombytes): before the Python code sees
   the groups again, so that each stays in position order. */
static int
routes_flush(Routes *routes)
{
    for (int r = 0; r < routes->n; r++) {
        Route *route = &routes->items[r];
        if (route->len == 0) {
            continue;
        }
        PyObject *data = PyBytes_FromStringAndSize(
            (const char *)route->positions, route->len * (Py_ssize_t)sizeof(long long));
        PyObject *done = data == NULL ? NULL
                                      : PyObject_CallMethod(route->group, "frombytes", "O", data);
        Py_XDECREF(data);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
        route->len = 0;
    }
    return 0;
}

static void
routes_release(Routes *routes)
{
    for (int r = 0; r < routes->n; r++) {
        Route *route = &routes->items[r];
        Py_DECREF(route->plan);
        Py_DECREF(route->result_class);
        Py_DECREF(route->removed);
        Py_DECREF(route->group);
        PyMem_Free(route->positions);
    }
    routes->n = 0;
}

static int
route_push(Route *route, long long position)
{
    if (route->len == route->cap) {
        Py_ssize_t cap = route->cap ? route->cap * 2 : 1024;
        long long *grown = PyMem_Realloc(route->positions, (size_t)cap * sizeof(long long));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        route->positions = grown;
        route->cap = cap;
    }
    route->positions[route->len++] = position;
    return 0;
}

/* The route of an instance of `plan` whose result is of class `result_class` and which loses
   the n names in `removed` (in the old state's order), found by identity. */
static Route *
route_find(Routes *routes, PyObject *plan, PyObject *result_class, PyObject **removed,
           Py_ssize_t n)
{
    for (int r = 0; r < routes->n; r++) {
        Route *route = &routes->items[r];
        if (route->plan != plan || route->result_class != result_class
            || PyTuple_GET_SIZE(route->removed) != n) {
            continue;
        }
        Py_ssize_t k = 0;
        while (k < n && PyTuple_GET_ITEM(route->removed, k) == removed[k]) {
            k++;
        }
        if (k == n) {
            return route;
        }
    }
    return NULL;
}

/* The route to the group that the plan's `groups` dict holds for (result_class, removed),
   made if there is room; NULL with no exception set when the group does not exist yet, or
   when there is no room (then *group is set: append to it directly). */
static Route *
route_add(Routes *routes, PyObject *plan, PyObject *result_class, PyObject *removed,
          PyObject **group)
{
    PyObject *key = PyTuple_Pack(2, result_class, removed);
    if (key == NULL) {
        return NULL;
    }
    *group = PyDict_GetItemWithError(PyTuple_GET_ITEM(plan, P_GROUPS), key);
    Py_DECREF(key);
    if (*group == NULL) {
        return NULL;
    }
    for (int r = 0; r < routes->n; r++) {  /* the same group under names equal but not identical */
        if (routes->items[r].group == *group) {
            return &routes->items[r];
        }
    }
    if (routes->n == MAX_ROUTES) {
        return NULL;
    }
    Route *route = &routes->items[routes->n++];
    route->plan = Py_NewRef(plan);
    route->result_class = Py_NewRef(result_class);
    route->removed = Py_NewRef(removed);
    route->group = Py_NewRef(*group);
    route->positions = NULL;
    route->len = route->cap = 0;
    return route;
}

/* One call's state: where results go, and the positions being migrated. */
typedef struct {
    PyObject *env, *replacements, *keep, *changed, *from_attr;
    int keep_pairs;
    Positions positions;
    Routes routes;
} Loop;

static PyObject *
as_tuple(PyObject **items, Py_ssize_t n)
{
    PyObject *tuple = PyTuple_New(n);
    for (Py_ssize_t k = 0; tuple != NULL && k < n; k++) {
        PyTuple_SET_ITEM(tuple, k, Py_NewRef(items[k]));
    }
    return tuple;
}

/* Record how `obj` (at position `position`, of class `cls`) becomes `result`, whose class the
   plan checked and whose __dict__ is `result_state`. Returns 1 if recorded, 0 if the instance's
   group does not exist yet or the Python code must take it (nothing recorded), -1 on an error. */
static int
record(Loop *loop, PyObject *plan, long long position, PyObject *obj, PyObject *cls,
       PyObject *old_state, PyObject *result, PyObject *result_state)
{
    Routes *routes = &loop->routes;
    PyObject *missing[MAX_REMOVED], *key, *value;
    Py_ssize_t n_missing = 0, pos = 0;
    while (PyDict_Next(old_state, &pos, &key, &value)) {
        int kept = PyDict_Contains(result_state, key);
        if (kept < 0) {
            return -1;
        }
        if (!kept) {
            if (n_missing == MAX_REMOVED) {
                return 0;  /* an unusual shape: the Python code takes it */
            }
            missing[n_missing++] = key;
        }
    }
    PyObject *changed = changed_values(old_state, result_state, loop->from_attr);
    if (changed == NULL && PyErr_Occurred()) {
        return -1;
    }
    int outcome = -1;
    PyObject *removed = NULL, *group = NULL, *result_class = (PyObject *)Py_TYPE(result);
    Py_ssize_t n_key = changed ? 0 : n_missing;  /* a changed state gets a new __dict__ */
    if (changed != NULL || n_missing) {
        if ((removed = as_tuple(missing, n_missing)) == NULL) {
            goto done;
        }
    }
    Route *route = route_find(routes, plan, result_class, missing, n_key);
    if (route == NULL) {
        route = route_add(routes, plan, result_class, n_key ? removed : empty_tuple, &group);
        if (route == NULL && group == NULL) {
            outcome = PyErr_Occurred() ? -1 : 0;
            goto done;
        }
    }
    if (result != obj) {  /* the new object becomes the old one (merge.py) */
        PyObject *id = PyLong_FromVoidPtr(result);
        int failed = id == NULL || PyDict_SetItem(loop->replacements, id, obj) < 0
                     || PyList_Append(loop->keep, result) < 0;
        Py_XDECREF(id);
        if (failed) {
            goto done;
        }
    }
    if (changed != NULL || route == NULL) {
        PyObject *index = PyLong_FromLongLong(position), *entry = NULL, *appended = NULL;
        int failed = index == NULL;
        if (!failed && changed != NULL) {
            entry = PyTuple_Pack(2, changed, removed);
            failed = entry == NULL || PyDict_SetItem(loop->changed, index, entry) < 0;
        }
        if (!failed && route == NULL) {
            appended = PyObject_CallMethodOneArg(group, str_append, index);
            failed = appended == NULL;
        }
        Py_XDECREF(index);
        Py_XDECREF(entry);
        Py_XDECREF(appended);
        if (failed) {
            goto done;
        }
    }
    if (route != NULL && route_push(route, position) < 0) {
        goto done;
    }
    if (loop->keep_pairs) {
        /* a changed instance gets a new __dict__ (this one stays the old state); one that only
           loses attributes loses them in place: its old state is a copy */
        PyObject *state = n_missing && changed == NULL ? PyDict_Copy(old_state)
                                                       : Py_NewRef(old_state);
        PyObject *pair = state == NULL ? NULL : PyTuple_Pack(4, obj, cls, state, obj);
        int failed = pair == NULL || PyList_Append(PyTuple_GET_ITEM(plan, P_PAIRS), pair) < 0;
        Py_XDECREF(state);
        Py_XDECREF(pair);
        if (failed) {
            goto done;
        }
    }
    outcome = 1;
done:
    Py_XDECREF(removed);
    Py_XDECREF(changed);
    return outcome;
}

/* One instance: SKIPPED (not affected), MIGRATED, WHOLE or FINISH (with *result set) when the
   Python code must take it, -1 on an error. */
static int
migrate_one(Loop *loop, PyObject *plans, PyObject *affected, Py_ssize_t i, PyObject *obj,
            PyObject **result)
{
    PyObject *cls = (PyObject *)Py_TYPE(obj);
    PyObject *plan = PyDict_GetItemWithError(plans, cls);
    if (plan == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        int hit = PySet_Contains(affected, cls);
        return hit < 0 ? -1 : hit ? WHOLE : SKIPPED;
    }
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != P_SIZE) {
        PyErr_SetString(PyExc_TypeError, "a fast plan is the tuple _ClassPlan.fast_entry() makes");
        return -1;
    }
    PyObject *old_state = PyObject_GetAttr(obj, str_dict);
    if (old_state == NULL) {
        return -1;
    }
    int outcome = WHOLE;
    PyObject *new = Py_None, *result_state = NULL;
    if (!PyDict_CheckExact(old_state)) {
        goto done;
    }
    if (PyTuple_GET_ITEM(plan, P_NEW) != Py_None && (new = by_name(plan, old_state)) == NULL) {
        outcome = PyErr_Occurred() ? -1 : WHOLE;
        goto done;
    }
    PyObject *policy = PyTuple_GET_ITEM(plan, P_POLICY);
    if (policy == Py_None) {
        *result = Py_NewRef(new);
    }
    else {
        PyObject *args[3] = {obj, new, loop->env};
        if ((*result = PyObject_Vectorcall(policy, args, 3, NULL)) == NULL) {
            outcome = -1;
            goto done;
        }
    }
    outcome = FINISH;  /* from here on, the Python code finishes with the result */
    int checked = PySet_Contains(PyTuple_GET_ITEM(plan, P_CHECKED), (PyObject *)Py_TYPE(*result));
    if (checked <= 0) {
        outcome = checked < 0 ? -1 : FINISH;
        goto done;
    }
    if ((result_state = PyObject_GetAttr(*result, str_dict)) == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        else {
            outcome = -1;
        }
        goto done;
    }
    long long position;
    if (position_at(&loop->positions, i, &position) < 0) {
        outcome = -1;
    }
    else if (PyDict_CheckExact(result_state)) {
        int recorded = record(loop, plan, position, obj, cls, old_state, *result, result_state);
        outcome = recorded < 0 ? -1 : recorded ? MIGRATED : FINISH;
    }
done:
    if (new != Py_None) {
        Py_XDECREF(new);
    }
    Py_XDECREF(result_state);
    Py_DECREF(old_state);
    if (outcome != FINISH) {
        Py_CLEAR(*result);
    }
    return outcome;
}

/* run(cursor, taken, positions, plans, affected, env, replacements, keep, changed, from_attr,
       keep_pairs) -> None | (status, result)

   Migrates taken[cursor[0]:] (the objects at `positions`). `plans` maps a live class to its
   fast plan; instances of other classes in `affected` stop the loop (WHOLE), others are
   skipped. It stops with (FINISH, result) when the Python code must finish an instance with the
   policy's `result`, with (WHOLE, None) when it must migrate the instance itself. On return, and
   on an exception, cursor is [the instance it stopped at, how many it migrated]. */
static PyObject *
run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11 || !PyList_Check(args[0]) || PyList_GET_SIZE(args[0]) != 2
        || !PyList_Check(args[1]) || !PyDict_Check(args[3]) || !PyAnySet_Check(args[4])
        || !PyDict_Check(args[6]) || !PyList_Check(args[7]) || !PyDict_Check(args[8])) {
        PyErr_SetString(PyExc_TypeError,
                        "run(cursor: [int, int], taken: list, positions, plans: dict, affected: "
                        "set, env, replacements: dict, keep: list, changed: dict, from_attr, "
                        "keep_pairs: bool)");
        return NULL;
    }
    PyObject *cursor = args[0], *taken = args[1];
    Loop loop = {args[5], args[6], args[7], args[8], args[9], PyObject_IsTrue(args[10])};
    Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(cursor, 0));
    if (loop.keep_pairs < 0 || (i == -1 && PyErr_Occurred())
        || positions_open(&loop.positions, args[2]) < 0) {
        return NULL;
    }
    Py_ssize_t migrated = 0, n = PyList_GET_SIZE(taken);
    int status = SKIPPED;
    PyObject *result = NULL;
    for (; i < n; i++) {
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(taken, i));  /* the policy could drop the list's */
        status = migrate_one(&loop, args[3], args[4], i, obj, &result);
        Py_DECREF(obj);
        if (status == MIGRATED) {
            migrated++;
        }
        else if (status != SKIPPED) {
            break;
        }
    }
    /* the groups get their positions even when stopping on an error: what was recorded stays
       consistent (the Python code then adds its note and the update is refused) */
    if (routes_flush(&loop.routes) < 0 && status >= 0) {
        status = -1;
    }
    routes_release(&loop.routes);
    positions_close(&loop.positions);
    PyObject *at = PyLong_FromSsize_t(i), *count = PyLong_FromSsize_t(migrated);
    if (at == NULL || count == NULL) {
        Py_XDECREF(at);
        Py_XDECREF(count);
        Py_XDECREF(result);
        return NULL;
    }
    /* cursor is a list of two: PyList_SetItem cannot fail (and takes the references) */
    PyList_SetItem(cursor, 0, at);
    PyList_SetItem(cursor, 1, count);
    if (status < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    if (status == WHOLE || status == FINISH) {
        return Py_BuildValue("(iN)", status, result != NULL ? result : Py_NewRef(Py_None));
    }
    Py_RETURN_NONE;
}

/* instance(plain, fallback, cls, /, **attrs): Env.instance for the classes in `plain` (made by
   object.__new__, a plain __dict__: the set Env.instance fills), without a Python frame or a
   dict for the keyword arguments; any other class goes to fallback(cls, **attrs). */
static PyObject *
instance(PyObject *module, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 3 || !PyAnySet_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "instance(plain: set, fallback, cls, /, **attrs)");
        return NULL;
    }
    PyObject *cls = args[2];
    int plain = PySet_Contains(args[0], cls);
    if (plain < 0) {
        return NULL;
    }
    if (!plain || !PyType_Check(cls)) {
        return PyObject_Vectorcall(args[1], args + 2, 1, kwnames);
    }
    PyObject *obj = PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty_tuple, NULL);
    if (obj == NULL || kwnames == NULL) {
        return obj;
    }
    PyObject *namespace = PyObject_GetAttr(obj, str_dict);
    int failed = namespace == NULL || !PyDict_Check(namespace);
    for (Py_ssize_t k = 0; !failed && k < PyTuple_GET_SIZE(kwnames); k++) {
        failed = PyDict_SetItem(namespace, PyTuple_GET_ITEM(kwnames, k), args[nargs + k]) < 0;
    }
    Py_XDECREF(namespace);
    if (failed) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_TypeError, "%R has no plain __dict__", cls);
        }
        Py_CLEAR(obj);
    }
    return obj;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(cursor, taken, positions, plans, affected, env, replacements, keep, changed, "
     "from_attr, keep_pairs): the migration loop over plain instances (migrate.py)."},
    {"instance", (PyCFunction)(void (*)(void))instance, METH_FASTCALL | METH_KEYWORDS,
     "instance(plain, fallback, cls, /, **attrs): Env.instance's path for plain classes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gdsu_fork._migrate",
    "The migration's hot loop over plain instances, in C (migrate.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__migrate(void)
{
    str_dict = PyUnicode_InternFromString("__dict__");
    str_append = PyUnicode_InternFromString("append");
    empty_tuple = PyTuple_New(0);
    if (str_dict == NULL || str_append == NULL || empty_tuple == NULL) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "FINISH", FINISH) < 0) {
        Py_CLEAR(m);
    }
    return m;
}
