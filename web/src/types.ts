// The shapes of the /v1 answers the dashboard reads (only the fields it uses).

export interface Gpu {
  name: string;
  vram: number;
  used: number; // by processes other than ggfleet's
}

export interface Claim {
  instance: string;
  deployment: string;
  gpu: number; // -1: the worker's RAM
  bytes: number;
  lent: boolean; // lent over RPC to another worker's llama-server
}

export interface Worker {
  name: string;
  address: string;
  status: string;
  last_heartbeat_ms: number;
  resources: {
    cpu?: { cores?: number; memory_bandwidth?: number };
    ram?: { total?: number; used?: number };
    gpus?: Gpu[];
    llama?: { build?: string };
    reserved?: { vram?: number; ram?: number };
    simulated?: boolean;
  };
  claims: Claim[];
}

export interface PlannedDevice {
  name: string;
  worker: string;
  gpu: number;
  gpu_name: string;
  remote: boolean;
  layers: number;
  first_block: number;
  last_block: number;
  has_output: boolean;
  vram_bytes: number;
  free_bytes: number;
}

export interface Layout {
  main_worker: string;
  devices: PlannedDevice[];
  total_layers: number;
  gpu_layers: number;
  cpu_layers: number;
  context_tokens: number;
  host_expert_blocks?: number[];
  host?: { total_bytes: number };
}

export interface BreakdownPart {
  part: string;
  worker?: string;
  generation_s: number;
  layers: number;
}

export interface Prediction {
  generation_tokens_per_s: number;
  prompt_tokens_per_s: number;
  time_to_first_token_s: number;
  startup_s: number;
  download_s?: number;
  bottleneck: string;
  breakdown: BreakdownPart[];
}

export interface Candidate {
  label: string;
  layout: Layout;
  prediction: Prediction;
}

export interface Plan {
  feasible: boolean;
  reason?: string;
  layout?: Layout;
  prediction?: Prediction;
  alternatives: Candidate[];
  rejected: { worker: string; reason: string }[];
  notes: string[];
  why_main?: string;
  layouts_evaluated: number;
  mains_evaluated: number;
}

export interface Deployment {
  name: string;
  model: string;
  replicas: number;
  options: Record<string, unknown>;
  instances: Record<string, number>;
  created_ms: number;
}

export interface HistoryPoint {
  time_ms: number;
  generation_tokens_per_s: number | null;
  prompt_tokens_per_s: number | null;
  alone: boolean;
}

export interface Instance {
  id: string;
  deployment: string;
  state: string;
  main_worker: string;
  reason: string;
  restarts: number;
  updated_ms: number;
  predicted?: { generation_tokens_per_s?: number; prompt_tokens_per_s?: number };
  measured?: {
    generation_tokens_per_s: number | null;
    prompt_tokens_per_s: number | null;
    samples: number;
    history?: HistoryPoint[];
  } | null;
  memory?: {
    device: string;
    worker: string;
    estimated_bytes: number;
    measured_bytes: number | null;
    peak_bytes: number | null;
  }[];
  download?: {
    done_bytes?: number;
    total_bytes?: number;
    rate_bytes_per_s?: number;
    eta_s?: number;
  } | null;
  assignment?: {
    plan?: Candidate;
    commands?: { worker: string; role: string; line: string }[];
  };
}

export interface Event {
  id: number;
  kind: string;
  subject: string;
  message: string;
  time_ms: number;
}

export interface Key {
  id: string;
  name: string;
  role: string;
  worker: string;
  created_ms: number;
}

export interface Whoami {
  id: string;
  name: string;
  role: string;
}
