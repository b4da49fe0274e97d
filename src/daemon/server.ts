// Builds the fleeced HTTP API: schemas on every route (TypeBox), the OpenAPI document, one error shape, optional
// bearer-token authentication and HTTPS (TCP), and the routes.
import Fastify, { type FastifyServerOptions } from 'fastify';
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
import { BearerTokenCheck } from './token.js';
import type { Logger } from '../util/logger.js';
import { InvalidInputError } from '../util/errors.js';

export interface ServerOptions {
  /** Requests must carry `Authorization: Bearer <token>` (TCP listeners); compared in constant time. */
  token?: string;
  /** Serve HTTPS (TLS 1.2 or newer) with this certificate chain and key (PEM): the TCP listener. */
  https?: { cert: string | Buffer; key: string | Buffer };
  logger?: Logger;
}

/** The lowest TLS version the API accepts. */
export const API_TLS_MIN_VERSION = 'TLSv1.2';

/** A ready-to-listen fastify instance serving the API. */
export async function buildServer(ctx: DaemonContext, options: ServerOptions = {}): Promise<Api> {
  const serverOptions: FastifyServerOptions & { https?: Record<string, unknown> } = {
    // Requests are logged at info by fastify: keep its logger at warn so the daemon's log shows what matters.
    ...(options.logger ? { loggerInstance: options.logger.child({ module: 'http' }, { level: 'warn' }) } : { logger: false }),
    forceCloseConnections: true,
    bodyLimit: 4 * 1024 * 1024,
    ...(options.https ? { https: { cert: options.https.cert, key: options.https.key, minVersion: API_TLS_MIN_VERSION } } : {}),
  };
  // fastify's types pick the server type from a literal `https` key; the instance is the same Api either way.
  const app = Fastify(serverOptions as FastifyServerOptions).withTypeProvider<TypeBoxTypeProvider>() as unknown as Api;
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
    const check = new BearerTokenCheck(options.token);
    app.addHook('onRequest', async (req, reply) => {
      if (!check.matches(req.headers.authorization)) {
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
