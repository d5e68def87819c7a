{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "vestibule.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name prefix. Suffixes below add at most 9 characters. */}}
{{- define "vestibule.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vestibule.operator.fullname" -}}
{{ include "vestibule.fullname" . }}-operator
{{- end }}

{{- define "vestibule.gateway.fullname" -}}
{{ include "vestibule.fullname" . }}-gateway
{{- end }}

{{- define "vestibule.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vestibule.labels" -}}
helm.sh/chart: {{ include "vestibule.chart" . }}
app.kubernetes.io/name: {{ include "vestibule.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vestibule
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; the component tells operator and gateway apart. */}}
{{- define "vestibule.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vestibule.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vestibule.operator.selectorLabels" -}}
{{ include "vestibule.selectorLabels" (dict "ctx" . "component" "operator") }}
{{- end }}

{{- define "vestibule.gateway.selectorLabels" -}}
{{ include "vestibule.selectorLabels" (dict "ctx" . "component" "gateway") }}
{{- end }}

{{- define "vestibule.operator.labels" -}}
{{ include "vestibule.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "vestibule.gateway.labels" -}}
{{ include "vestibule.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "vestibule.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "vestibule.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vestibule.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "vestibule.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vestibule.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Secret holding the config-server bearer token (key "token"). */}}
{{- define "vestibule.tokenSecretName" -}}
{{- default (printf "%s-token" (include "vestibule.fullname" .)) .Values.configServer.token.existingSecret }}
{{- end }}

{{/* Secret holding the config-server certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "vestibule.tlsSecretName" -}}
{{- default (printf "%s-config-tls" (include "vestibule.fullname" .)) .Values.configServer.tls.secretName }}
{{- end }}

{{/* The in-cluster DNS name gateways use to reach the config server. */}}
{{- define "vestibule.operator.host" -}}
{{ include "vestibule.operator.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end }}

{{- define "vestibule.operator.url" -}}
{{ ternary "https" "http" .Values.configServer.tls.enabled }}://{{ include "vestibule.operator.host" . }}:{{ .Values.configServer.port }}
{{- end }}

{{- define "vestibule.leaseName" -}}
{{- default (include "vestibule.operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{- define "vestibule.publishService" -}}
{{- default (printf "%s/%s" .Release.Namespace (include "vestibule.gateway.fullname" .)) .Values.operator.publishService.override }}
{{- end }}

{{/* Default anti-affinity: prefer one replica per node. */}}
{{- define "vestibule.affinity" -}}
{{- if .affinity }}
{{- toYaml .affinity }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- .selector | nindent 12 }}
{{- end }}
{{- end }}
