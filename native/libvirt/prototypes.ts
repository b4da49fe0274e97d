// The libvirt.so.0 functions fleece calls, as koffi prototypes in C order (libvirt 9.0 headers), declared by the worker.

/**
 * Types the worker declares before these prototypes:
 * - `virConnectPtr`, `virDomainPtr`, `virDomainCheckpointPtr`: named pointers to opaque structs (BigInts in koffi 3).
 * - `owned_char *`: a `char *` that the caller must free() (libvirt's XML strings); kept as a pointer so that the
 *   worker can decode it and then free it. `const char *` results (names) belong to their object and are decoded as
 *   strings directly.
 * - `virDomainBlockInfo`: the struct (capacity, allocation, physical: unsigned long long).
 * Out-arrays (`virDomainPtr **`, `virTypedParameterPtr *`) are `_Out_ void **`: the worker reads the array itself.
 * `virSetErrorFunc`'s handler is a plain `void *` (a function address).
 */
export const LIBVIRT_PROTOTYPES = [
  // virterror.h
  'void *virGetLastError()',
  'void virResetLastError()',
  'void virSetErrorFunc(void *userData, void *handler)',
  'void virConnSetErrorFunc(virConnectPtr conn, void *userData, void *handler)',
  // libvirt-host.h
  'virConnectPtr virConnectOpen(const char *name)',
  'virConnectPtr virConnectOpenReadOnly(const char *name)',
  'int virConnectClose(virConnectPtr conn)',
  'int virConnectIsAlive(virConnectPtr conn)',
  'int virConnectGetLibVersion(virConnectPtr conn, _Out_ unsigned long *libVer)',
  'int virConnectGetVersion(virConnectPtr conn, _Out_ unsigned long *hvVer)',
  // libvirt-domain.h
  'virDomainPtr virDomainLookupByName(virConnectPtr conn, const char *name)',
  'int virDomainFree(virDomainPtr domain)',
  'const char *virDomainGetName(virDomainPtr domain)',
  'int virDomainGetUUIDString(virDomainPtr domain, uint8_t *buf)',
  'int virDomainGetState(virDomainPtr domain, _Out_ int *state, _Out_ int *reason, unsigned int flags)',
  'int virDomainGetBlockInfo(virDomainPtr dom, const char *disk, _Out_ virDomainBlockInfo *info, unsigned int flags)',
  'owned_char *virDomainGetXMLDesc(virDomainPtr domain, unsigned int flags)',
  'int virConnectListAllDomains(virConnectPtr conn, _Out_ void **domains, unsigned int flags)',
  'virDomainPtr virDomainDefineXML(virConnectPtr conn, const char *xml)',
  'int virDomainUndefineFlags(virDomainPtr domain, unsigned int flags)',
  'int virDomainCreate(virDomainPtr domain)',
  'int virDomainDestroy(virDomainPtr domain)',
  'int virDomainBackupBegin(virDomainPtr domain, const char *backupXML, const char *checkpointXML, unsigned int flags)',
  'owned_char *virDomainBackupGetXMLDesc(virDomainPtr domain, unsigned int flags)',
  'int virDomainGetJobStats(virDomainPtr domain, _Out_ int *type, _Out_ void **params, _Out_ int *nparams, unsigned int flags)',
  'int virDomainAbortJob(virDomainPtr domain)',
  'int virDomainFSFreeze(virDomainPtr dom, const char **mountpoints, unsigned int nmountpoints, unsigned int flags)',
  'int virDomainFSThaw(virDomainPtr dom, const char **mountpoints, unsigned int nmountpoints, unsigned int flags)',
  // libvirt-common.h
  'void virTypedParamsFree(void *params, int nparams)',
  // libvirt-domain-checkpoint.h
  'virDomainCheckpointPtr virDomainCheckpointCreateXML(virDomainPtr domain, const char *xmlDesc, unsigned int flags)',
  'virDomainCheckpointPtr virDomainCheckpointLookupByName(virDomainPtr domain, const char *name, unsigned int flags)',
  'const char *virDomainCheckpointGetName(virDomainCheckpointPtr checkpoint)',
  'owned_char *virDomainCheckpointGetXMLDesc(virDomainCheckpointPtr checkpoint, unsigned int flags)',
  'int virDomainListAllCheckpoints(virDomainPtr domain, _Out_ void **checkpoints, unsigned int flags)',
  'int virDomainCheckpointDelete(virDomainCheckpointPtr checkpoint, unsigned int flags)',
  'int virDomainCheckpointFree(virDomainCheckpointPtr checkpoint)',
] as const;

/** From libc.so.6: the free() for libvirt's strings and arrays. */
export const LIBC_PROTOTYPES = ['void free(void *ptr)'] as const;

/**
 * libvirt's own virResetError(virErrorPtr): called as an error handler (userData, err) with userData NULL it returns at
 * once (`if (err == NULL) return;`), so it is a native no-op handler, safe on any thread and for the process lifetime.
 */
export const NATIVE_NOOP_ERROR_HANDLER = 'virResetError';
