import { MemoryStorage } from '../../src/storage/memory-storage.ts';
import { storageConformance } from './conformance.ts';

storageConformance('MemoryStorage', () => ({
  open: async () => new MemoryStorage(),
  reopen: async (storage) => storage,
  cleanup: async () => undefined,
}));
