package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

// dlopen_error tries to load path and returns the loader's reason on failure (NULL if it
// loads). The handle is closed again at once.
static const char *dlopen_error(const char *path) {
	void *h = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
	if (h == NULL) {
		return dlerror();
	}
	if (dlsym(h, "C_GetFunctionList") == NULL) {
		dlclose(h);
		return "no C_GetFunctionList symbol";
	}
	dlclose(h);
	return NULL;
}
*/
import "C"

import "unsafe"

// dlopenError returns why the dynamic loader refuses path ("" if it loads). Used only to
// explain a failure: the binding reports a failed dlopen with no reason.
func dlopenError(path string) string {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if msg := C.dlopen_error(cpath); msg != nil {
		return C.GoString(msg)
	}
	return ""
}
