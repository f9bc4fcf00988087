// Python entry point of one build of the kernels: rnnofrnns._C_default, _C_avx2 or _C_avx512
// (setup.py compiles every source once per CPU capability; TORCH_EXTENSION_NAME names the
// build). The ops register with the dispatcher (TORCH_LIBRARY) when the shared library is
// loaded; the module only has to exist so that importing it loads it. rnnofrnns/ops/
// _capability.py imports exactly one build per process. No pybind11 needed.
#include <Python.h>

#define RNNOFRNNS_CONCAT_(a, b) a##b
#define RNNOFRNNS_CONCAT(a, b) RNNOFRNNS_CONCAT_(a, b)
#define RNNOFRNNS_STR_(a) #a
#define RNNOFRNNS_STR(a) RNNOFRNNS_STR_(a)

extern "C" {
PyMODINIT_FUNC RNNOFRNNS_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, RNNOFRNNS_STR(TORCH_EXTENSION_NAME),
                                          "rnnofrnns fused CPU kernels, one CPU capability", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
