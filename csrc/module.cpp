// The Python module portrait_engine._C. It holds nothing: importing it loads the shared
// library, whose static initialisers register the ops under torch.ops.portrait_engine
// (csrc/ops.cpp and the TORCH_LIBRARY_IMPL blocks). Plain CPython API, no <torch/extension.h>.

#include <Python.h>

static struct PyModuleDef portrait_engine_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",                                                       // m_name
    "Native kernels of portrait_engine (ops in torch.ops.portrait_engine).",  // m_doc
    -1,                                                         // m_size
    nullptr,                                                    // m_methods
    nullptr,                                                    // m_slots
    nullptr,                                                    // m_traverse
    nullptr,                                                    // m_clear
    nullptr,                                                    // m_free
};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&portrait_engine_c_module); }
