// Imported first by the entry points: libuv reads UV_THREADPOOL_SIZE once, when its thread pool first starts.
//
// Why 8 and not libuv's 4: a backup keeps one pool thread in poll(2) for the NBD sockets (native/nbd-poller.ts)
// and up to 4 object writes (write + fsync, each blocking a thread until the device answers) in flight; with 4
// threads the NBD wake-ups queue behind the fsyncs and the reads stall.
if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '8';
export {};
