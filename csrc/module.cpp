// Python entry point of rnnofrnns._C. The ops themselves register with the
// dispatcher (TORCH_LIBRARY) when the shared library is loaded; the module only
// has to exist so that `import rnnofrnns._C` loads it. No pybind11 needed.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "rnnofrnns fused CPU kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
