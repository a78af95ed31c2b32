/* bench/instructions.py --by-library: every Python frame is evaluated through one of 256 C
   functions (px_slot_000 … px_slot_255), the one for its code's library, so that callgrind,
   told to skip the interpreter's own functions (their cost goes to their caller), charges
   each library the instructions its Python code ran, with whatever the interpreter and libc
   did for it. CPython 3.11/3.12 (PEP 523's frame evaluation hook; internal headers). */
#define Py_BUILD_CORE 1
#include <Python.h>
#include "internal/pycore_frame.h"
#include "internal/pycore_interp.h"
#include "internal/pycore_ceval.h"

#define SLOTS 256
static Py_ssize_t extra = -1; /* the code objects' co_extra index holding slot + 1 */
static PyObject *classify;    /* callable(code, its globals' __name__) -> slot */
static _Thread_local int classifying;

typedef PyObject *(*evaluate)(PyThreadState *, _PyInterpreterFrame *, int);
/* noinline and the barrier after the call: a function of its own, not a tail call */
#define SLOT(n)                                                                               \
    static __attribute__((noinline)) PyObject *px_slot_##n(PyThreadState *t, _PyInterpreterFrame *f, int x) { \
        PyObject *r = _PyEval_EvalFrameDefault(t, f, x);                                      \
        __asm__ volatile("" ::: "memory");                                                    \
        return r;                                                                             \
    }
#define S8(n) SLOT(n##0) SLOT(n##1) SLOT(n##2) SLOT(n##3) SLOT(n##4) SLOT(n##5) SLOT(n##6) SLOT(n##7)
#define S64(n) S8(n##0) S8(n##1) S8(n##2) S8(n##3) S8(n##4) S8(n##5) S8(n##6) S8(n##7)
S64(0) S64(1) S64(2) S64(3) /* named in octal: px_slot_377 is slot 255 */
#define P8(n) px_slot_##n##0, px_slot_##n##1, px_slot_##n##2, px_slot_##n##3, \
              px_slot_##n##4, px_slot_##n##5, px_slot_##n##6, px_slot_##n##7
#define P64(n) P8(n##0), P8(n##1), P8(n##2), P8(n##3), P8(n##4), P8(n##5), P8(n##6), P8(n##7)
static evaluate table[SLOTS] = {P64(0), P64(1), P64(2), P64(3)};

static PyObject *px_hook(PyThreadState *t, _PyInterpreterFrame *f, int x) {
    if (classifying) /* the classifier's own frames: slot 0 */
        return table[0](t, f, x);
    PyObject *code = (PyObject *)f->f_code;
    void *got = NULL;
    long n;
    if (_PyCode_GetExtra(code, extra, &got) == 0 && got != NULL) {
        n = (long)(intptr_t)got - 1;
    } else {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        classifying = 1;
        PyObject *module = f->f_globals ? PyDict_GetItemString(f->f_globals, "__name__") : NULL;
        PyObject *r = PyObject_CallFunctionObjArgs(classify, code, module ? module : Py_None, NULL);
        classifying = 0;
        n = r ? PyLong_AsLong(r) : 0;
        if (n < 0 || n >= SLOTS)
            n = 0;
        Py_XDECREF(r);
        PyErr_Clear();
        _PyCode_SetExtra(code, extra, (void *)(intptr_t)(n + 1));
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    return table[n](t, f, x);
}

static PyObject *install(PyObject *self, PyObject *fn) {
    Py_INCREF(fn);
    classify = fn;
    extra = _PyEval_RequestCodeExtraIndex(NULL);
    if (extra < 0)
        return NULL;
    _PyInterpreterState_SetEvalFrameFunc(PyThreadState_Get()->interp, px_hook);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {{"install", install, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pyslots", NULL, -1, methods};
PyMODINIT_FUNC PyInit_pyslots(void) { return PyModule_Create(&module); }
