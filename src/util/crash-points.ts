/**
 * Named points inside multi-step operations (key rotations, key store rewrites) where a test may
 * kill the process to prove that a crash at that step leaves a manager that starts and reads
 * everything. Production code calls `reached(point)`; it does nothing unless a test installed a hook.
 */
export type CrashHook = (point: string) => void;

let hook: CrashHook | null = null;

export function installCrashHook(next: CrashHook | null): void {
  hook = next;
}

export function reached(point: string): void {
  if (hook !== null) hook(point);
}
