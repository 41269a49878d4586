package hsm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

// The head of PKCS#11's CK_FUNCTION_LIST: a CK_VERSION (two bytes) and then the function
// pointers in the order of pkcs11f.h (68 in versions 2.x; 3.0 keeps them first).
struct coffer_fl {
	unsigned char major, minor;
	void *fn[68];
};
typedef unsigned long (*coffer_gfl)(struct coffer_fl **);

enum {
	PROBE_OK = 0,
	PROBE_DLOPEN,    // dlopen failed: why holds dlerror()
	PROBE_NOSYM,     // no C_GetFunctionList
	PROBE_RV,        // C_GetFunctionList returned *rv
	PROBE_NULLLIST,  // it returned CKR_OK and no list
	PROBE_VERSION,   // the list's version is below 2
	PROBE_NULLFN,    // the list's entry *missing is NULL
};

// probe_module loads path, calls its C_GetFunctionList and checks that the list holds the
// functions in need[0..nneed). On success *handle is the open handle (the caller closes it
// once the binding has loaded the module itself, so the module is not unloaded between).
static int probe_module(const char *path, const int *need, int nneed, void **handle,
		unsigned long *rv, int *missing, char *why, size_t whylen) {
	*handle = NULL;
	void *h = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		strncpy(why, e ? e : "unknown error", whylen - 1);
		why[whylen - 1] = 0;
		return PROBE_DLOPEN;
	}
	coffer_gfl gfl = (coffer_gfl)dlsym(h, "C_GetFunctionList");
	if (gfl == NULL) {
		dlclose(h);
		return PROBE_NOSYM;
	}
	struct coffer_fl *list = NULL;
	*rv = gfl(&list);
	if (*rv != 0) {
		dlclose(h);
		return PROBE_RV;
	}
	if (list == NULL) {
		dlclose(h);
		return PROBE_NULLLIST;
	}
	if (list->major < 2) {
		*rv = list->major;
		dlclose(h);
		return PROBE_VERSION;
	}
	for (int i = 0; i < nneed; i++) {
		if (list->fn[need[i]] == NULL) {
			*missing = need[i];
			dlclose(h);
			return PROBE_NULLFN;
		}
	}
	*handle = h;
	return PROBE_OK;
}

static void close_handle(void *h) {
	if (h != NULL) {
		dlclose(h);
	}
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// neededFunctions are the entries of CK_FUNCTION_LIST (index in pkcs11f.h order) that
// crypto11 and the binding call. The binding calls C_GetFunctionList without checking its
// result and then calls through the list: a missing or failing list, or a NULL entry, would
// be a jump to address 0 (SIGSEGV) instead of an error.
var neededFunctions = []struct {
	index int
	name  string
}{
	{0, "C_Initialize"}, {1, "C_Finalize"}, {2, "C_GetInfo"}, {4, "C_GetSlotList"},
	{6, "C_GetTokenInfo"}, {7, "C_GetMechanismList"}, {12, "C_OpenSession"},
	{13, "C_CloseSession"}, {18, "C_Login"}, {20, "C_CreateObject"}, {22, "C_DestroyObject"},
	{24, "C_GetAttributeValue"}, {26, "C_FindObjectsInit"}, {27, "C_FindObjects"},
	{28, "C_FindObjectsFinal"}, {29, "C_EncryptInit"}, {30, "C_Encrypt"},
	{31, "C_EncryptUpdate"}, {32, "C_EncryptFinal"}, {33, "C_DecryptInit"}, {34, "C_Decrypt"},
	{35, "C_DecryptUpdate"}, {36, "C_DecryptFinal"}, {42, "C_SignInit"}, {43, "C_Sign"},
	{44, "C_SignUpdate"}, {45, "C_SignFinal"}, {58, "C_GenerateKey"},
	{59, "C_GenerateKeyPair"}, {64, "C_GenerateRandom"},
}

// probeModule loads the module at path and checks its C_GetFunctionList before the binding
// relies on it. On success the returned release closes this load of the module; call it
// once the binding has loaded the module (or failed to). On failure it returns why.
func probeModule(path string) (release func(), why string) {
	need := make([]C.int, len(neededFunctions))
	for i, f := range neededFunctions {
		need[i] = C.int(f.index)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	cneed := (*C.int)(C.malloc(C.size_t(len(need)) * C.size_t(unsafe.Sizeof(C.int(0)))))
	defer C.free(unsafe.Pointer(cneed))
	copy(unsafe.Slice(cneed, len(need)), need)
	const whyLen = 512
	cwhy := (*C.char)(C.calloc(whyLen, 1))
	defer C.free(unsafe.Pointer(cwhy))
	var handle unsafe.Pointer
	var rv C.ulong
	var missing C.int
	switch C.probe_module(cpath, cneed, C.int(len(need)), &handle, &rv, &missing, cwhy, whyLen) {
	case C.PROBE_OK:
		return func() { C.close_handle(handle) }, ""
	case C.PROBE_DLOPEN:
		return nil, C.GoString(cwhy)
	case C.PROBE_NOSYM:
		return nil, "it has no C_GetFunctionList (not a PKCS#11 module)"
	case C.PROBE_RV:
		return nil, fmt.Sprintf("its C_GetFunctionList failed (%s)", pkcs11.Error(rv))
	case C.PROBE_NULLLIST:
		return nil, "its C_GetFunctionList returned no function list"
	case C.PROBE_VERSION:
		return nil, fmt.Sprintf("its function list is for PKCS#11 version %d, want 2 or later", rv)
	case C.PROBE_NULLFN:
		name := fmt.Sprintf("entry %d", missing)
		for _, f := range neededFunctions {
			if f.index == int(missing) {
				name = f.name
			}
		}
		return nil, fmt.Sprintf("its function list has no %s (a NULL entry)", name)
	}
	return nil, "unknown probe result"
}
