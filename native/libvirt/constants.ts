// libvirt's numeric constants fleece uses, each read from the libvirt 9.0.0 headers (Debian libvirt-dev 9.0.0-4+deb12u2).

// virErrorNumber (virterror.h).
export const VIR_ERR_OK = 0;
export const VIR_ERR_INTERNAL_ERROR = 1;
export const VIR_ERR_NO_MEMORY = 2;
export const VIR_ERR_NO_SUPPORT = 3;
export const VIR_ERR_NO_CONNECT = 5;
export const VIR_ERR_INVALID_CONN = 6;
export const VIR_ERR_INVALID_DOMAIN = 7;
export const VIR_ERR_INVALID_ARG = 8;
export const VIR_ERR_OPERATION_FAILED = 9;
export const VIR_ERR_XML_ERROR = 27;
export const VIR_ERR_DOM_EXIST = 28;
export const VIR_ERR_OPERATION_DENIED = 29;
export const VIR_ERR_SYSTEM_ERROR = 38;
export const VIR_ERR_RPC = 39;
export const VIR_ERR_NO_DOMAIN = 42;
export const VIR_ERR_AUTH_FAILED = 45;
export const VIR_ERR_OPERATION_INVALID = 55;
export const VIR_ERR_CONFIG_UNSUPPORTED = 67;
export const VIR_ERR_OPERATION_TIMEOUT = 68;
export const VIR_ERR_ARGUMENT_UNSUPPORTED = 74;
export const VIR_ERR_OPERATION_ABORTED = 78;
export const VIR_ERR_OPERATION_UNSUPPORTED = 84;
export const VIR_ERR_AGENT_UNRESPONSIVE = 86;
export const VIR_ERR_RESOURCE_BUSY = 87;
export const VIR_ERR_ACCESS_DENIED = 88;
export const VIR_ERR_XML_INVALID_SCHEMA = 92;
export const VIR_ERR_AUTH_UNAVAILABLE = 94;
export const VIR_ERR_AGENT_UNSYNCED = 97;
export const VIR_ERR_DEVICE_MISSING = 99;
export const VIR_ERR_INVALID_DOMAIN_CHECKPOINT = 102;
export const VIR_ERR_NO_DOMAIN_CHECKPOINT = 103;
export const VIR_ERR_NO_DOMAIN_BACKUP = 104;
export const VIR_ERR_CHECKPOINT_INCONSISTENT = 109;
export const VIR_ERR_MULTIPLE_DOMAINS = 110;

/** The codes above by their short name (`VIR_ERR.NO_DOMAIN` = VIR_ERR_NO_DOMAIN). */
export const VIR_ERR = Object.freeze({
  OK: VIR_ERR_OK, INTERNAL_ERROR: VIR_ERR_INTERNAL_ERROR, NO_MEMORY: VIR_ERR_NO_MEMORY, NO_SUPPORT: VIR_ERR_NO_SUPPORT,
  NO_CONNECT: VIR_ERR_NO_CONNECT, INVALID_CONN: VIR_ERR_INVALID_CONN, INVALID_DOMAIN: VIR_ERR_INVALID_DOMAIN,
  INVALID_ARG: VIR_ERR_INVALID_ARG, OPERATION_FAILED: VIR_ERR_OPERATION_FAILED, XML_ERROR: VIR_ERR_XML_ERROR,
  DOM_EXIST: VIR_ERR_DOM_EXIST, OPERATION_DENIED: VIR_ERR_OPERATION_DENIED, SYSTEM_ERROR: VIR_ERR_SYSTEM_ERROR,
  RPC: VIR_ERR_RPC, NO_DOMAIN: VIR_ERR_NO_DOMAIN, AUTH_FAILED: VIR_ERR_AUTH_FAILED,
  OPERATION_INVALID: VIR_ERR_OPERATION_INVALID, CONFIG_UNSUPPORTED: VIR_ERR_CONFIG_UNSUPPORTED,
  OPERATION_TIMEOUT: VIR_ERR_OPERATION_TIMEOUT, ARGUMENT_UNSUPPORTED: VIR_ERR_ARGUMENT_UNSUPPORTED,
  OPERATION_ABORTED: VIR_ERR_OPERATION_ABORTED, OPERATION_UNSUPPORTED: VIR_ERR_OPERATION_UNSUPPORTED,
  AGENT_UNRESPONSIVE: VIR_ERR_AGENT_UNRESPONSIVE, RESOURCE_BUSY: VIR_ERR_RESOURCE_BUSY,
  ACCESS_DENIED: VIR_ERR_ACCESS_DENIED, XML_INVALID_SCHEMA: VIR_ERR_XML_INVALID_SCHEMA,
  AUTH_UNAVAILABLE: VIR_ERR_AUTH_UNAVAILABLE, AGENT_UNSYNCED: VIR_ERR_AGENT_UNSYNCED, DEVICE_MISSING: VIR_ERR_DEVICE_MISSING,
  INVALID_DOMAIN_CHECKPOINT: VIR_ERR_INVALID_DOMAIN_CHECKPOINT, NO_DOMAIN_CHECKPOINT: VIR_ERR_NO_DOMAIN_CHECKPOINT,
  NO_DOMAIN_BACKUP: VIR_ERR_NO_DOMAIN_BACKUP, CHECKPOINT_INCONSISTENT: VIR_ERR_CHECKPOINT_INCONSISTENT,
  MULTIPLE_DOMAINS: VIR_ERR_MULTIPLE_DOMAINS,
} as const);

/** The names of the codes above, for messages and logs (42 → `VIR_ERR_NO_DOMAIN`). */
export const VIR_ERROR_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(VIR_ERR).map(([name, code]) => [code, `VIR_ERR_${name}`]));

// virErrorDomain (virterror.h): the part of libvirt that raised an error.
export const VIR_FROM_NONE = 0;
export const VIR_FROM_DOM = 6;
export const VIR_FROM_RPC = 7;
export const VIR_FROM_QEMU = 10;
export const VIR_FROM_REMOTE = 13;
export const VIR_FROM_DOMAIN = 20;
export const VIR_FROM_DOMAIN_CHECKPOINT = 69;

// virConnectFlags (libvirt-host.h).
export const VIR_CONNECT_RO = 1 << 0;

// virDomainState (libvirt-domain.h): index = value.
export const DOMAIN_STATES = ['nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed', 'pmsuspended'] as const;

// virDomainXMLFlags (libvirt-domain.h).
export const VIR_DOMAIN_XML_SECURE = 1 << 0;
export const VIR_DOMAIN_XML_INACTIVE = 1 << 1;
export const VIR_DOMAIN_XML_UPDATE_CPU = 1 << 2;
export const VIR_DOMAIN_XML_MIGRATABLE = 1 << 3;

// virDomainUndefineFlagsValues (libvirt-domain.h).
export const VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1 << 0;
export const VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA = 1 << 1;
export const VIR_DOMAIN_UNDEFINE_NVRAM = 1 << 2;
export const VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA = 1 << 4;

// virDomainBackupBeginFlags (libvirt-domain.h).
export const VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL = 1 << 0;

// virDomainJobType (libvirt-domain.h): index = value.
export const JOB_TYPES = ['none', 'bounded', 'unbounded', 'completed', 'failed', 'cancelled'] as const;

// virDomainGetJobStatsFlags (libvirt-domain.h).
export const VIR_DOMAIN_JOB_STATS_COMPLETED = 1 << 0;
export const VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 1 << 1;

// virDomainJobOperation (libvirt-domain.h): the `operation` job stats field.
export const VIR_DOMAIN_JOB_OPERATION_UNKNOWN = 0;
export const VIR_DOMAIN_JOB_OPERATION_SNAPSHOT = 6;
export const VIR_DOMAIN_JOB_OPERATION_BACKUP = 9;
export const VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE = 10;

// virDomainCheckpointCreateFlags (libvirt-domain-checkpoint.h).
export const VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE = 1 << 2;

// virDomainCheckpointXMLFlags (libvirt-domain-checkpoint.h).
export const VIR_DOMAIN_CHECKPOINT_XML_SECURE = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_XML_SIZE = 1 << 2;

// virDomainCheckpointListFlags (libvirt-domain-checkpoint.h).
export const VIR_DOMAIN_CHECKPOINT_LIST_ROOTS = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_LIST_LEAVES = 1 << 2;

// virDomainCheckpointDeleteFlags (libvirt-domain-checkpoint.h).
export const VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN = 1 << 0;
export const VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY = 1 << 1;
export const VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY = 1 << 2;

// virTypedParameterType (libvirt-common.h).
export const VIR_TYPED_PARAM_INT = 1;
export const VIR_TYPED_PARAM_UINT = 2;
export const VIR_TYPED_PARAM_LLONG = 3;
export const VIR_TYPED_PARAM_ULLONG = 4;
export const VIR_TYPED_PARAM_DOUBLE = 5;
export const VIR_TYPED_PARAM_BOOLEAN = 6;
export const VIR_TYPED_PARAM_STRING = 7;

/** VIR_TYPED_PARAM_FIELD_LENGTH (libvirt-common.h): `char field[80]`, NUL-terminated. */
export const VIR_TYPED_PARAM_FIELD_LENGTH = 80;
/** VIR_UUID_STRING_BUFLEN (libvirt-host.h): 36 characters and the NUL. */
export const VIR_UUID_STRING_BUFLEN = 37;
