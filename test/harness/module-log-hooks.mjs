// The loader hooks of module-log.mjs (they run on Node's loader thread): report each module's URL as it loads.
let port;

export function initialize(data) {
  port = data.port;
}

export async function load(url, context, nextLoad) {
  port.postMessage(url);
  return nextLoad(url, context);
}
