// Builds the fleeced HTTP API: schemas on every route (TypeBox), the OpenAPI document, one error shape, optional
// bearer-token authentication (TCP), and the routes.
import { timingSafeEqual } from 'node:crypto';
import Fastify from 'fastify';
import swagger from '@fastify/swagger';
import { TypeBoxValidatorCompiler, type TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { ErrorSchema, HealthSchema } from './api-types.js';
import type { Api, DaemonContext } from './context.js';
import { errorReply } from './errors.js';
import { checkpointRoutes } from './routes/checkpoints.js';
import { eventRoutes } from './routes/events.js';
import { jobRoutes } from './routes/jobs.js';
import { repositoryRoutes } from './routes/repository.js';
import { vmRoutes } from './routes/vms.js';
import type { Logger } from '../util/logger.js';
import { InvalidInputError } from '../util/errors.js';

export interface ServerOptions {
  /** Requests must carry `Authorization: Bearer <token>` (TCP listeners). */
  token?: string;
  logger?: Logger;
}

function tokenMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(/^Bearer (.+)$/i.exec(header ?? '')?.[1] ?? '');
  const wanted = Buffer.from(token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

/** A ready-to-listen fastify instance serving the API. */
export async function buildServer(ctx: DaemonContext, options: ServerOptions = {}): Promise<Api> {
  const app = Fastify({
    // Requests are logged at info by fastify: keep its logger at warn so the daemon's log shows what matters.
    ...(options.logger ? { loggerInstance: options.logger.child({ module: 'http' }, { level: 'warn' }) } : { logger: false }),
    forceCloseConnections: true,
    bodyLimit: 4 * 1024 * 1024,
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as Api;
  app.setValidatorCompiler(TypeBoxValidatorCompiler);
  // JSON bodies: an empty body is no body (POST …/abort with a JSON content type), bad JSON is a 400 naming the body.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, text, done) => {
    const body = String(text);
    if (body.trim() === '') {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(body));
    } catch (error) {
      done(new InvalidInputError(`body: not valid JSON: ${(error as Error).message}`), undefined);
    }
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'fleeced', description: 'The fleece host daemon: VMs, checkpoints, backup jobs, repositories.', version: ctx.version },
      ...(options.token ? { components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } }, security: [{ bearer: [] }] } : {}),
    },
  });

  if (options.token) {
    const token = options.token;
    app.addHook('onRequest', async (req, reply) => {
      if (!tokenMatches(req.headers.authorization, token)) {
        await reply
          .code(401)
          .header('www-authenticate', 'Bearer')
          .send({ error: { code: 'UNAUTHORIZED', message: 'missing or wrong bearer token; send Authorization: Bearer <token from the token file>' } });
      }
    });
  }

  app.setErrorHandler(async (error, req, reply) => {
    const { status, body } = errorReply(error);
    if (status >= 500) req.log.error({ err: error, url: req.url }, 'request failed');
    await reply.code(status).send(body);
  });
  app.setNotFoundHandler(async (req, reply) => {
    await reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });

  app.get('/v1/health', { schema: { response: { 200: HealthSchema, 500: ErrorSchema } } }, async () => ({
    version: ctx.version,
    pid: process.pid,
    uptimeMs: Date.now() - ctx.startedAt,
  }));
  app.get('/openapi.json', { schema: { hide: true, response: { 200: Type.Unknown() } } }, async () => app.swagger());

  vmRoutes(app, ctx);
  checkpointRoutes(app, ctx);
  jobRoutes(app, ctx);
  eventRoutes(app, ctx);
  repositoryRoutes(app, ctx);
  await app.ready();
  return app;
}
