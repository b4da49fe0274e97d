// The restore layer's public surface.
export type { BlockSink } from './block-sink.js';
export { createSparseFileSink, openExistingSink } from './file-sink.js';
export { restoreBackup, type RestoreOptions, type RestoreSummary } from './restore.js';
export { restoreToQcow2 } from './qcow2-output.js';
export { MemorySink } from './memory-sink.js';
