{{/* Chart name. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "ferry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ferry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ include "ferry.chart" . }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{/* Labels that select the controller pods (never change them: selectors are immutable). */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- /* toString: a tag written as a YAML number (2, 1.5) is a number to Helm. */}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* Settings that cannot work together. */}}
{{- define "ferry.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would act on the same VMs" }}
{{- end }}
{{- if ge (int .Values.leaderElection.leaseGraceSeconds) (int .Values.leaderElection.leaseDurationSeconds) }}
{{- fail "leaderElection.leaseGraceSeconds must be smaller than leaderElection.leaseDurationSeconds" }}
{{- end }}
{{- if and .Values.aggregatedAPI.enabled (not .Values.aggregatedAPI.tlsSecret) }}
{{- fail "aggregatedAPI.enabled needs aggregatedAPI.tlsSecret: a kubernetes.io/tls Secret with the serving certificate" }}
{{- end }}
{{- if and .Values.aggregatedAPI.enabled (not (or .Values.aggregatedAPI.caBundle .Values.aggregatedAPI.certManagerCertificate)) }}
{{- fail "aggregatedAPI.enabled needs aggregatedAPI.caBundle or aggregatedAPI.certManagerCertificate: the API server must trust the serving certificate" }}
{{- end }}
{{- end }}

{{/*
Rules for the namespaces the controller watches (PermissionScope::Watched in
src/controller/permissions.rs; tests/deploy.rs compares them).
*/}}
{{- define "ferry.watchedRules" -}}
- apiGroups: ["ferry.dev"]
  resources: ["virtualmachines"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["ferry.dev"]
  resources: ["virtualmachines/status"]
  verbs: ["patch"]
- apiGroups: ["ferry.dev"]
  resources: ["hostpools"]
  verbs: ["list", "watch"]
- apiGroups: ["ferry.dev"]
  resources: ["virtualmachinemigrations"]
  verbs: ["list", "watch", "patch", "create", "delete"]
- apiGroups: ["ferry.dev"]
  resources: ["virtualmachinemigrations/status"]
  verbs: ["patch"]
- apiGroups: ["ferry.dev"]
  resources: ["hostpools/status"]
  verbs: ["patch"]
- apiGroups: ["ferry.dev"]
  resources: ["hapolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["ferry.dev"]
  resources: ["hapolicies/status"]
  verbs: ["patch"]
- apiGroups: ["ferry.dev"]
  resources: ["virtualmachinemigrations"]
  verbs: ["list", "create"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "watch"]
{{- end }}
