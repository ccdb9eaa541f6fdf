/**
 * Finding a resource and this node's part of it, with errors that list what
 * the config does have.
 */
import { MirrorError } from '../errors.js';
import type { Config, NodeConfig, ResourceConfig } from './model.js';

export function findResource(config: Config, name: string): ResourceConfig {
  const found = config.resources.find((r) => r.name === name);
  if (found !== undefined) return found;
  const known = config.resources.map((r) => r.name);
  const listed = known.length > 0 ? `it has ${known.join(', ')}` : 'it has no resources';
  throw new MirrorError('ERR_NO_SUCH_RESOURCE', `no resource ${name} in ${config.file}; ${listed}`, {
    resource: name,
    file: config.file,
    known,
  });
}

export function localNode(resource: ResourceConfig, nodeName: string): NodeConfig {
  const found = resource.nodes.find((n) => n.name === nodeName);
  if (found !== undefined) return found;
  const known = resource.nodes.map((n) => n.name);
  throw new MirrorError(
    'ERR_NODE_NOT_IN_RESOURCE',
    `node ${nodeName} is not in resource ${resource.name}; its 'on' sections are ${known.join(', ')} (choose one with --node)`,
    { resource: resource.name, node: nodeName, known },
  );
}
