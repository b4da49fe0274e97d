// What every route of fleeced needs: the job manager (jobs, VMs, QMP connections) and the daemon's facts.
import type { FastifyBaseLogger, FastifyInstance, RawServerDefault } from 'fastify';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { JobManager } from '../app/job-manager.js';

export interface DaemonContext {
  manager: JobManager;
  version: string;
  startedAt: number;
}

/** A fastify instance typed by the TypeBox schemas of each route. */
export type Api = FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, FastifyBaseLogger, TypeBoxTypeProvider>;
