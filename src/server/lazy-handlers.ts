import * as grpc from '@grpc/grpc-js';
import { assert } from '../util/assert.ts';

/** Finds, once loaded, the handler of a method: by its name in the definition, or its definition. */
export type HandlerFinder = (
  name: string,
  method: grpc.MethodDefinition<unknown, unknown>,
) => grpc.UntypedHandleCall | undefined;

/**
 * Handlers for `service` that hold each call until `load` has given the real handlers (a package
 * imported at the first call rather than at every start), then hand it on. Unary calls and
 * streams alike. If the load fails, the call ends INTERNAL, saying that `what` could not answer.
 */
export function lazyHandlers(
  service: grpc.ServiceDefinition,
  what: string,
  load: () => Promise<HandlerFinder>,
): grpc.UntypedServiceImplementation {
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(service)) {
    handlers[name] = ((call: grpc.ServerUnaryCall<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
      load()
        .then((find) => {
          const handler = find(name, method as grpc.MethodDefinition<unknown, unknown>);
          assert(handler !== undefined, () => `${what} has no handler for ${method.path}`);
          (handler as (call: unknown, callback?: unknown) => void)(call, callback);
        })
        .catch((error: unknown) => {
          const status = {
            code: grpc.status.INTERNAL,
            details: `${what} could not answer: ${(error as Error).message}`,
          };
          if (callback !== undefined) callback(status);
          else call.emit('error', status);
        });
    }) as grpc.UntypedHandleCall;
  }
  return handlers;
}
