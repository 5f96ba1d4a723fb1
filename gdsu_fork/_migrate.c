/* The migration's hot loop (migrate.py), in C.

   For each instance of a plain class (a __dict__, no slots, same layout): the blank instance of
   the new class filled by name, the policy's call, and the record of what changed in the bulk
   delta — what Migration._migrate_plain does, without the interpreter's bookkeeping around the
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

typedef struct {
    PyObject *env, *replacements, *keep, *changed, *from_attr;
    int keep_pairs;
} Sinks;

/* The blank instance of the plan's class holding the old fields it still declares; NULL with
   no exception set when it has no plain __dict__ (the Python code then takes the instance). */
static PyObject *
by_name(PyObject *plan, PyObject *old_state)
{
    PyObject *new = PyObject_CallOneArg(PyTuple_GET_ITEM(plan, P_NEW),
                                        PyTuple_GET_ITEM(plan, P_TARGET));
    if (new == NULL) {
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

/* The old field names `result_state` lacks, in order (the empty tuple if none). */
static PyObject *
removed_names(PyObject *old_state, PyObject *result_state)
{
    PyObject *names = PyList_New(0), *key, *value;
    Py_ssize_t pos = 0;
    if (names == NULL) {
        return NULL;
    }
    while (PyDict_Next(old_state, &pos, &key, &value)) {
        int kept = PyDict_Contains(result_state, key);
        if (kept < 0 || (!kept && PyList_Append(names, key) < 0)) {
            Py_DECREF(names);
            return NULL;
        }
    }
    PyObject *removed = PyList_GET_SIZE(names) ? PyList_AsTuple(names) : Py_NewRef(empty_tuple);
    Py_DECREF(names);
    return removed;
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
        PyObject *entry = source == NULL ? Py_NewRef(value) : PyObject_CallOneArg(from_attr, source);
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

/* Record how `obj` (at `index`, of class `cls`) becomes `result`, whose class the plan checked
   and whose __dict__ is `result_state`. Returns 1 if recorded, 0 if the instance's group does not
   exist yet (nothing recorded), -1 on an error. */
static int
record(Sinks *sinks, PyObject *plan, PyObject *positions, Py_ssize_t i, PyObject *obj,
       PyObject *cls, PyObject *old_state, PyObject *result, PyObject *result_state)
{
    int outcome = -1;
    PyObject *removed = NULL, *changed = NULL, *group_key = NULL, *index = NULL;
    if ((removed = removed_names(old_state, result_state)) == NULL) {
        return -1;
    }
    changed = changed_values(old_state, result_state, sinks->from_attr);
    if (changed == NULL && PyErr_Occurred()) {
        goto done;
    }
    group_key = PyTuple_Pack(2, (PyObject *)Py_TYPE(result), changed ? empty_tuple : removed);
    if (group_key == NULL) {
        goto done;
    }
    PyObject *group = PyDict_GetItemWithError(PyTuple_GET_ITEM(plan, P_GROUPS), group_key);
    if (group == NULL) {
        outcome = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if ((index = PySequence_GetItem(positions, i)) == NULL) {
        goto done;
    }
    if (result != obj) {  /* the new object becomes the old one (merge.py) */
        PyObject *id = PyLong_FromVoidPtr(result);
        int failed = id == NULL || PyDict_SetItem(sinks->replacements, id, obj) < 0
                     || PyList_Append(sinks->keep, result) < 0;
        Py_XDECREF(id);
        if (failed) {
            goto done;
        }
    }
    if (changed != NULL) {
        PyObject *entry = PyTuple_Pack(2, changed, removed);
        int failed = entry == NULL || PyDict_SetItem(sinks->changed, index, entry) < 0;
        Py_XDECREF(entry);
        if (failed) {
            goto done;
        }
    }
    PyObject *appended = PyObject_CallMethodOneArg(group, str_append, index);
    if (appended == NULL) {
        goto done;
    }
    Py_DECREF(appended);
    if (sinks->keep_pairs) {
        /* a changed instance gets a new __dict__ (this one stays the old state); one that only
           loses attributes loses them in place: its old state is a copy */
        PyObject *state = PyTuple_GET_SIZE(removed) && changed == NULL ? PyDict_Copy(old_state)
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
    Py_XDECREF(group_key);
    Py_XDECREF(index);
    return outcome;
}

/* One instance: SKIPPED (not affected), MIGRATED, WHOLE or FINISH (with *result set) when the
   Python code must take it, -1 on an error. */
static int
migrate_one(Sinks *sinks, PyObject *plans, PyObject *affected, PyObject *positions,
            Py_ssize_t i, PyObject *obj, PyObject **result)
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
        PyObject *args[3] = {obj, new, sinks->env};
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
    if (PyDict_CheckExact(result_state)) {
        int recorded = record(sinks, plan, positions, i, obj, cls, old_state, *result,
                              result_state);
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
   skipped. On return, and on an exception, cursor is [the instance it stopped at, how many it
   migrated]. */
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
    PyObject *cursor = args[0], *taken = args[1], *positions = args[2];
    Sinks sinks = {args[5], args[6], args[7], args[8], args[9], PyObject_IsTrue(args[10])};
    Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(cursor, 0));
    if (sinks.keep_pairs < 0 || (i == -1 && PyErr_Occurred())) {
        return NULL;
    }
    Py_ssize_t migrated = 0, n = PyList_GET_SIZE(taken);
    int status = SKIPPED;
    PyObject *result = NULL;
    for (; i < n; i++) {
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(taken, i));  /* the policy could drop the list's */
        status = migrate_one(&sinks, args[3], args[4], positions, i, obj, &result);
        Py_DECREF(obj);
        if (status == MIGRATED) {
            migrated++;
        }
        else if (status != SKIPPED) {
            break;
        }
    }
    PyObject *at = PyLong_FromSsize_t(i), *count = PyLong_FromSsize_t(migrated);
    if (at == NULL || count == NULL) {
        Py_XDECREF(at);
        Py_XDECREF(count);
        Py_XDECREF(result);
        return NULL;
    }
    /* PyList_SetItem takes the reference, even when it fails */
    if (PyList_SetItem(cursor, 0, at) < 0 || PyList_SetItem(cursor, 1, count) < 0 || status < 0) {
        Py_XDECREF(result);
        return NULL;
    }
    if (status == WHOLE || status == FINISH) {
        return Py_BuildValue("(iN)", status, result != NULL ? result : Py_NewRef(Py_None));
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))run, METH_FASTCALL,
     "run(cursor, taken, positions, plans, affected, env, replacements, keep, changed, "
     "from_attr, keep_pairs): the migration loop over plain instances (migrate.py)."},
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
    return PyModule_Create(&module);
}
