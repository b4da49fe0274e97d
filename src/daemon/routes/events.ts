// Server-sent events: `event: state` / `event: progress` with the JobInfo as data, per job or for every job.
import type { ServerResponse } from 'node:http';
import { Type } from 'typebox';
import { isFinalJobState, type JobInfo } from '../../app/jobs/job-info.js';
import type { JobEvent } from '../../app/job-manager.js';
import { ErrorSchema } from '../api-types.js';
import type { Api, DaemonContext } from '../context.js';

const KEEPALIVE_MS = 15_000;

function open(raw: ServerResponse): void {
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
  });
  raw.write(': fleeced events\n\n');
}

function send(raw: ServerResponse, type: JobEvent['type'], job: JobInfo): void {
  raw.write(`event: ${type}\ndata: ${JSON.stringify(job)}\n\n`);
}

export function eventRoutes(app: Api, { manager }: DaemonContext): void {
  app.get(
    '/v1/jobs/:id/events',
    {
      schema: {
        params: Type.Object({ id: Type.String({ minLength: 1 }) }),
        response: { 200: Type.String({ description: 'text/event-stream' }), 404: ErrorSchema },
      },
    },
    async (req, reply) => {
      const first = manager.get(req.params.id);
      reply.hijack();
      const raw = reply.raw;
      open(raw);
      send(raw, 'state', first);
      if (isFinalJobState(first.state)) {
        raw.end();
        return;
      }
      const keepalive = setInterval(() => raw.write(': keepalive\n\n'), KEEPALIVE_MS);
      const stop = () => {
        clearInterval(keepalive);
        unsubscribe();
      };
      const unsubscribe = manager.subscribe((event) => {
        if (event.job.id !== first.id) return;
        send(raw, event.type, event.job);
        if (event.type === 'state' && isFinalJobState(event.job.state)) {
          stop();
          raw.end();
        }
      });
      raw.on('close', stop);
    },
  );

  app.get('/v1/events', { schema: { response: { 200: Type.String({ description: 'text/event-stream' }) } } }, async (_req, reply) => {
    reply.hijack();
    const raw = reply.raw;
    open(raw);
    const keepalive = setInterval(() => raw.write(': keepalive\n\n'), KEEPALIVE_MS);
    const unsubscribe = manager.subscribe((event) => send(raw, event.type, event.job));
    raw.on('close', () => {
      clearInterval(keepalive);
      unsubscribe();
    });
  });
}
