// Runs the compiled fleeced as a child process in a fleece-test- directory and talks HTTP/SSE to it over its socket.
import { execa, type ResultPromise } from 'execa';
import http from 'node:http';
import { join } from 'node:path';

const MAIN = join(process.cwd(), 'dist/src/daemon/main.js');

export interface HttpReply {
  status: number;
  // Parsed JSON body (undefined for an empty body).
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  text: string;
}

export interface SseEvent {
  event: string;
  data: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface Target {
  socketPath?: string;
  host?: string;
  port?: number;
}

/** One HTTP request; the body is sent as JSON. */
export function request(target: Target, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = http.request(
      { ...target, method, path, headers: { ...(payload !== undefined ? { 'content-type': 'application/json' } : {}), ...headers } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body: parsed, text });
        });
      },
    );
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/** An open SSE stream: the events so far, and a promise that resolves when the server ends it. */
export interface SseStream {
  events: SseEvent[];
  ended: Promise<SseEvent[]>;
  /** Resolves with the first event (from now on, or already received) that matches. */
  waitFor(predicate: (e: SseEvent) => boolean): Promise<SseEvent>;
  close(): void;
}

export function openEvents(target: Target, path: string): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const events: SseEvent[] = [];
    const waiters: { predicate: (e: SseEvent) => boolean; resolve: (e: SseEvent) => void }[] = [];
    let endResolve!: (e: SseEvent[]) => void;
    const ended = new Promise<SseEvent[]>((r) => (endResolve = r));
    const req = http.request({ ...target, method: 'GET', path }, (res) => {
      let buffer = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let cut: number;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data += line.slice(6);
          }
          if (!data) continue;
          const e = { event, data: JSON.parse(data) };
          events.push(e);
          for (const w of [...waiters]) {
            if (w.predicate(e)) {
              waiters.splice(waiters.indexOf(w), 1);
              w.resolve(e);
            }
          }
        }
      });
      res.on('end', () => endResolve(events));
      res.on('close', () => endResolve(events));
      resolve({
        events,
        ended,
        waitFor: (predicate) => {
          const found = events.find(predicate);
          if (found) return Promise.resolve(found);
          return new Promise((r) => waiters.push({ predicate, resolve: r }));
        },
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
    req.end();
  });
}

export interface DaemonProcess {
  socket: string;
  target: Target;
  proc: ResultPromise;
  /** Everything the daemon wrote on stderr so far. */
  stderr(): string;
  request(method: string, path: string, body?: unknown): Promise<HttpReply>;
  /** SIGKILL (a crash). */
  kill(): Promise<void>;
  /** SIGTERM and wait (SIGKILL after 10 s). Idempotent. */
  stop(): Promise<void>;
}

export interface DaemonDirs {
  socket: string;
  stateDir: string;
  configDir: string;
  runDir: string;
}

export function daemonDirs(dir: string): DaemonDirs {
  return { socket: join(dir, 'fleeced.sock'), stateDir: join(dir, 'state'), configDir: join(dir, 'config'), runDir: join(dir, 'run') };
}

/**
 * Starts `node dist/src/daemon/main.js` and resolves once it logs that it listens (rejects if it exits first).
 * `env` is added to the test's environment (e.g. FLEECE_TEST_PAUSE_AT).
 */
export async function startDaemonProcess(dirs: DaemonDirs, extraArgs: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
  const args = [MAIN, '--socket', dirs.socket, '--state-dir', dirs.stateDir, '--config-dir', dirs.configDir, '--run-dir', dirs.runDir, '--log-level', 'info', ...extraArgs];
  const proc = execa('node', args, { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', env: { ...process.env, ...env } });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr?.setEncoding('utf8');
    proc.stderr?.on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.includes('fleeced listening')) resolve();
    });
    void proc.then((r) => reject(new Error(`fleeced exited with ${r.exitCode} before listening: ${stderr}`)));
  });
  const target = { socketPath: dirs.socket };
  let stopped: Promise<void> | undefined;
  return {
    socket: dirs.socket,
    target,
    proc,
    stderr: () => stderr,
    request: (method, path, body) => request(target, method, path, body),
    kill: async () => {
      proc.kill('SIGKILL');
      await proc;
    },
    stop: () => {
      stopped ??= (async () => {
        if (proc.exitCode !== null && proc.exitCode !== undefined) return;
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        await proc;
        clearTimeout(timer);
      })();
      return stopped;
    },
  };
}

/** Runs fleeced expecting it to refuse to start; resolves with its exit code and stderr. */
export async function runDaemonExpectingFailure(dirs: DaemonDirs, extraArgs: string[]): Promise<{ exitCode: number | undefined; stderr: string }> {
  const args = [MAIN, '--socket', dirs.socket, '--state-dir', dirs.stateDir, '--config-dir', dirs.configDir, '--run-dir', dirs.runDir, ...extraArgs];
  const result = await execa('node', args, { reject: false, timeout: 20_000, stdin: 'ignore' });
  return { exitCode: result.exitCode, stderr: String(result.stderr) };
}
