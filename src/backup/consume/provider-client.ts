// The process protocol of an external backup provider: one call = one process, `EXEC VERB` with the request as
// JSON on stdin and the answer as JSON on stdout; stderr goes to fleece's log line by line under the provider's
// name. Every call has a timeout and an AbortSignal: the provider runs in its own process group, which gets
// SIGTERM and, after a grace period, SIGKILL (so that a provider's own children — restic, nbdcopy — go too).
import { spawn } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { lazyLogger } from './lazy-logger.js';
import {
  buildRequest,
  isProviderVerb,
  parseReply,
  ProviderError,
  type ProviderVerb,
  type ReplyOf,
  type RequestOf,
} from './provider-contract.js';

const log = lazyLogger('backup.provider');

/** Default time a call may take: a minute for the bookkeeping verbs, a day for the ones that move the data. */
export const DEFAULT_TIMEOUTS_S: Record<ProviderVerb, number> = {
  'job-init': 60,
  'job-cleanup': 60,
  'backup-init': 60,
  'backup-cleanup': 600,
  'get-mechanism': 60,
  'query-incremental': 60,
  'backup-vm': 86_400,
  'restore-get-mechanism': 60,
  'restore-vm-init': 600,
  'restore-volume-init': 86_400,
  'restore-volume-cleanup': 600,
  'restore-vm-cleanup': 600,
};

/** How long a provider has between SIGTERM and SIGKILL. */
export const KILL_GRACE_MS = 3_000;
/** The most a provider may print on stdout (its answer). */
export const MAX_ANSWER_BYTES = 4 * 1024 * 1024;
/** An exit status a provider uses for a verb it does not implement (EX_USAGE). */
export const EXIT_UNKNOWN_VERB = 64;
/** stderr lines kept for error messages. */
const STDERR_TAIL = 12;

export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides the provider's timeout for this call. */
  timeoutMs?: number;
  /** A private 0700 directory the call may use (in-process drivers keep temporary files there). */
  workDir?: string;
  /** The provider process started (its pid is its process group's): for the journal. */
  onSpawn?: (pid: number) => void;
}

/** Something that answers the contract's verbs: a provider executable, or a tool driver inside fleece. */
export interface ProviderEndpoint {
  readonly name: string;
  /** 'exec' (an executable) or 'tool' (a tool driver, configuration only). */
  readonly kind: 'exec' | 'tool';
  /**
   * Calls one verb. @throws ProviderError naming the provider, the verb and what went wrong (exit status and the
   * last stderr lines, a timeout, a kill, bad JSON, a field against the contract); ProviderError('aborted').
   */
  call<V extends ProviderVerb>(verb: V, params: RequestOf<V>, options?: CallOptions): Promise<ReplyOf<V>>;
}

export interface ExecProviderOptions {
  name: string;
  /** The executable (absolute path). */
  exec: string;
  /** Passed in every request as `config`. */
  config?: string;
  /** Seconds per verb, over DEFAULT_TIMEOUTS_S. */
  timeouts?: Partial<Record<ProviderVerb, number>>;
  /** The provider's environment; default fleece's own. */
  env?: NodeJS.ProcessEnv;
  /** Every stderr line, as it comes (the CLI shows them with --verbose). */
  onStderr?: (line: string, verb: ProviderVerb) => void;
}

function describeExit(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `was killed by ${signal}` : `exited with status ${code}`;
}

/** An external provider executable. */
export class ExecProvider implements ProviderEndpoint {
  readonly kind = 'exec' as const;
  readonly name: string;

  constructor(private readonly options: ExecProviderOptions) {
    this.name = options.name;
  }

  timeoutOf(verb: ProviderVerb): number {
    return (this.options.timeouts?.[verb] ?? DEFAULT_TIMEOUTS_S[verb]) * 1000;
  }

  call<V extends ProviderVerb>(verb: V, params: RequestOf<V>, options: CallOptions = {}): Promise<ReplyOf<V>> {
    const { name } = this;
    if (!isProviderVerb(verb)) {
      return Promise.reject(new ProviderError(name, String(verb), 'unknown-verb', `was not called: '${String(verb)}' is no verb of the contract`));
    }
    if (options.signal?.aborted) {
      return Promise.reject(new ProviderError(name, verb, 'aborted', 'was not called: the operation was aborted', { cause: options.signal.reason }));
    }
    const document = JSON.stringify(buildRequest(verb, { provider: name, ...(this.options.config ? { config: this.options.config } : {}) }, params));
    const timeoutMs = options.timeoutMs ?? this.timeoutOf(verb);
    return new Promise<ReplyOf<V>>((resolve, reject) => {
      const started = Date.now();
      const child = spawn(this.options.exec, [verb], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: this.options.env ?? process.env,
        detached: true,
      });
      const pid = child.pid;
      if (pid !== undefined) options.onSpawn?.(pid);
      const stdout: Buffer[] = [];
      let stdoutBytes = 0;
      const tail: string[] = [];
      let partial = '';
      let ended: { reason: 'timeout' | 'aborted' | 'too-much-output'; detail: string; hint?: string } | undefined;
      let killTimer: NodeJS.Timeout | undefined;
      const group = (signal: NodeJS.Signals) => {
        if (pid === undefined) return;
        try {
          process.kill(-pid, signal);
        } catch {
          try {
            child.kill(signal);
          } catch {
            // gone already
          }
        }
      };
      const stop = (why: NonNullable<typeof ended>) => {
        if (ended) return;
        ended = why;
        group('SIGTERM');
        killTimer = setTimeout(() => group('SIGKILL'), KILL_GRACE_MS);
        killTimer.unref();
      };
      const line = (text: string) => {
        if (text === '') return;
        tail.push(text);
        if (tail.length > STDERR_TAIL) tail.shift();
        log.info({ provider: name, verb, pid }, text);
        this.options.onStderr?.(text, verb);
      };
      const timer = setTimeout(() => {
        stop({
          reason: 'timeout',
          detail: `did not answer within ${Math.round(timeoutMs / 1000)} s and was stopped`,
          hint: `raise the limit with \`fleece provider add ${name} … --timeout ${verb}=SECONDS\`, or see why it hangs in its stderr (fleece's log)`,
        });
      }, timeoutMs);
      const onAbort = () => stop({ reason: 'aborted', detail: 'was stopped: the operation was aborted' });
      if (options.signal) {
        setMaxListeners(0, options.signal);
        options.signal.addEventListener('abort', onAbort, { once: true });
      }
      child.stdout.on('data', (chunk: Buffer) => {
        stdoutBytes += chunk.length;
        if (stdoutBytes > MAX_ANSWER_BYTES) {
          stop({ reason: 'too-much-output', detail: `printed more than ${MAX_ANSWER_BYTES} bytes on stdout`, hint: 'stdout is for the one JSON answer; messages go to stderr' });
          return;
        }
        stdout.push(chunk);
      });
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) line(l.replace(/\r$/, ''));
      });
      child.stdin.on('error', () => undefined); // a provider that does not read its request
      child.stdin.end(document);
      const withTail = (text: string) => (tail.length > 0 ? `${text}; its last stderr lines: ${tail.join(' | ')}` : `${text} (nothing on stderr)`);
      child.on('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        reject(new ProviderError(name, verb, 'spawn', `could not be run as ${this.options.exec}: ${error.code ?? error.message}`, {
          cause: error,
          hint: 'check the path and that it is executable (`fleece provider list`)',
        }));
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (killTimer) clearTimeout(killTimer);
        options.signal?.removeEventListener('abort', onAbort);
        line(partial);
        partial = '';
        // A provider that left children behind: they go with its group.
        group('SIGKILL');
        const text = Buffer.concat(stdout).toString('utf8');
        log.debug({ provider: name, verb, pid, code, signal, ms: Date.now() - started }, 'provider call ended');
        if (ended) {
          reject(new ProviderError(name, verb, ended.reason, withTail(ended.detail), {
            ...(ended.hint ? { hint: ended.hint } : {}),
            ...(ended.reason === 'aborted' ? { cause: options.signal?.reason } : {}),
          }));
          return;
        }
        if (code !== 0) {
          const said = errorOf(text);
          if (code === EXIT_UNKNOWN_VERB) {
            reject(new ProviderError(name, verb, 'unknown-verb', withTail(`does not implement '${verb}' (exit status ${EXIT_UNKNOWN_VERB})${said ? `: ${said}` : ''}`), {
              hint: 'every verb of contract 1 is required (docs/providers.md)',
            }));
            return;
          }
          reject(new ProviderError(name, verb, signal ? 'signal' : 'exit', withTail(`${describeExit(code, signal)}${said ? `: ${said}` : ''}`)));
          return;
        }
        try {
          resolve(parseReply(name, verb, text));
        } catch (error) {
          reject(error);
        }
      });
    });
  }
}

/** The `error` a failing provider may print as `{"error": "…"}` on stdout. */
function errorOf(stdout: string): string | undefined {
  try {
    const doc = JSON.parse(stdout) as { error?: unknown };
    return typeof doc.error === 'string' ? doc.error : undefined;
  } catch {
    return undefined;
  }
}
