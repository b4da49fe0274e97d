// Types for seek-bzip (a pure-JavaScript bzip2 decoder without its own declarations).
declare module 'seek-bzip' {
  const Bunzip: { decode(input: Uint8Array, expectedSize?: number): Buffer };
  export default Bunzip;
}
