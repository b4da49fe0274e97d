// The public surface of the qemu layer: block graph, pure action builders, transaction, jobs, nodes, bitmaps, NBD.
export * from './actions.js';
export * from './block-graph.js';
export * from './transaction.js';
export * from './jobs.js';
export * from './errors.js';
export {
  blockdevAdd,
  blockdevDel,
  fileNodeOptions,
  formatNodeOptions,
  qcow2CreateOptions,
  createQcow2Image,
  openImage,
  closeImage,
  deleteNodesQuietly,
  type ImageNodes,
  type Qcow2CreateOptions,
  type CreateQcow2ImageOptions,
  type OpenImageOptions,
} from './blockdev.js';
export * from './bitmaps.js';
export * from './nbd-export.js';
