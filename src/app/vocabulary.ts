// The lower layers' words that the CLI and the daemon need (XML parsers, the checkpoint tree, record types), so that
// cli/ and daemon/ import app/ only (scripts/check-layers.mjs).
export { parseBackupXml } from '../backup/definition/index.js';
export { parseCheckpointXml, MAX_XML_BYTES } from '../checkpoint/checkpoint-xml.js';
export { CheckpointChain, formatCheckpointTree } from '../checkpoint/chain.js';
export type { Checkpoint, CheckpointDefinition } from '../checkpoint/model.js';
export type { BackupRecord, Compression } from '../repository/index.js';
export { queryDisks } from '../qemu/block-graph.js';
