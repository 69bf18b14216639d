// The Python module portrait_engine._C. It holds nothing: importing it loads the shared
// library, whose static initialisers register the ops under torch.ops.portrait_engine
// (csrc/ops.cpp and the TORCH_LIBRARY_IMPL blocks), and the constant BUILD_INFO (how it was
// built). Plain CPython API, no <torch/extension.h>. BUILD_INFO is a module constant rather than
// only the op's string result so that Python reads it without a std::string crossing into
// libtorch (a mismatch of the C++ string ABI between the extension and torch crashes there).

#include <Python.h>

#include "common.h"

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

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&portrait_engine_c_module);
  if (module == nullptr) {
    return nullptr;
  }
  const std::string info = portrait_engine::build_info();
  if (PyModule_AddStringConstant(module, "BUILD_INFO", info.c_str()) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
