/** The package's public surface: the client library. */
export { CofferClient, ClientError, type ClientOptions, type SecretMetadataReply } from './client/client.ts';
