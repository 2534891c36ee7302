{{/*
The pod template shared by the Deployment and the DaemonSet.
*/}}
{{- define "relay.podTemplate" -}}
metadata:
  labels:
    {{- include "relay.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or .Values.config.enabled .Values.podAnnotations }}
  annotations:
    {{- if .Values.config.enabled }}
    checksum/config: {{ .Values.config.toml | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  serviceAccountName: {{ include "relay.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  hostNetwork: {{ .Values.hostNetwork }}
  dnsPolicy: {{ default (ternary "ClusterFirstWithHostNet" "ClusterFirst" .Values.hostNetwork) .Values.dnsPolicy }}
  # Longer than preStop sleep + drain deadline: SIGKILL would cut calls without an end cause.
  terminationGracePeriodSeconds: {{ include "relay.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
    seccompProfile:
      {{- if eq .Values.seccomp.profile "ioUring" }}
      type: Localhost
      localhostProfile: {{ .Values.seccomp.localhostProfile | quote }}
      {{- else if eq .Values.seccomp.profile "RuntimeDefault" }}
      type: RuntimeDefault
      {{- else }}
      {{- fail "seccomp.profile must be RuntimeDefault or ioUring" }}
      {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if .Values.scheduling.spreadAcrossNodes }}
  affinity:
    podAntiAffinity:
      {{- if .Values.hostNetwork }}
      # Two pods of this release on one node would collide on the host's ports.
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "relay.selectorLabels" . | nindent 14 }}
      {{- else }}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "relay.selectorLabels" . | nindent 16 }}
      {{- end }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml .Values.topologySpreadConstraints | nindent 4 }}
  {{- else if .Values.scheduling.zoneSpread.enabled }}
  topologySpreadConstraints:
    - topologyKey: topology.kubernetes.io/zone
      maxSkew: {{ .Values.scheduling.zoneSpread.maxSkew }}
      whenUnsatisfiable: {{ .Values.scheduling.zoneSpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "relay.selectorLabels" . | nindent 10 }}
  {{- end }}
  containers:
    - name: relay
      image: {{ include "relay.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- with .Values.relay.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        # Referenced as $(POD_IP) below, so it comes first.
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: RELAY_CONTROL_LISTEN
          value: "{{ .Values.listenHost }}:{{ .Values.control.port }}"
        - name: RELAY_CONTROL_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ include "relay.tokenSecretName" . }}
              key: {{ .Values.control.token.secretKey }}
        - name: RELAY_METRICS_LISTEN
          value: "{{ .Values.listenHost }}:{{ .Values.metrics.port }}"
        - name: RELAY_WHATSAPP_V4
          value: {{ .Values.media.whatsappV4 | quote }}
        - name: RELAY_WHATSAPP_V6
          value: {{ .Values.media.whatsappV6 | quote }}
        - name: RELAY_INTERNAL
          value: {{ .Values.media.internal | quote }}
        {{- with include "relay.advertiseEnv" (dict "name" "RELAY_ADVERTISE_V4" "spec" .Values.advertise.v4 "hostNetwork" .Values.hostNetwork) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with include "relay.advertiseEnv" (dict "name" "RELAY_ADVERTISE_V6" "spec" .Values.advertise.v6 "hostNetwork" .Values.hostNetwork) }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with include "relay.advertiseEnv" (dict "name" "RELAY_ADVERTISE_INTERNAL" "spec" .Values.advertise.internal "hostNetwork" .Values.hostNetwork) }}
        {{- . | nindent 8 }}
        {{- end }}
        - name: RELAY_PORT_MIN
          value: {{ .Values.media.portMin | quote }}
        - name: RELAY_PORT_MAX
          value: {{ .Values.media.portMax | quote }}
        - name: RELAY_SHARDS
          value: {{ .Values.relay.shards | quote }}
        - name: RELAY_CAPACITY
          value: {{ .Values.relay.capacity | quote }}
        - name: RELAY_MAX_CALLS_PER_NUMBER
          value: {{ .Values.relay.maxCallsPerNumber | quote }}
        - name: RELAY_MAX_SHARD_BUSY_PERCENT
          value: {{ .Values.relay.maxShardBusyPercent | quote }}
        {{- if .Values.control.tls.enabled }}
        - name: RELAY_CONTROL_TLS_CERT
          value: "{{ .Values.control.tls.mountPath }}/{{ .Values.control.tls.certKey }}"
        - name: RELAY_CONTROL_TLS_KEY
          value: "{{ .Values.control.tls.mountPath }}/{{ .Values.control.tls.keyKey }}"
        {{- if .Values.control.tls.clientCaKey }}
        - name: RELAY_CONTROL_TLS_CLIENT_CA
          value: "{{ .Values.control.tls.mountPath }}/{{ .Values.control.tls.clientCaKey }}"
        {{- end }}
        {{- end }}
        - name: RELAY_DRAIN_DEADLINE
          value: "{{ .Values.relay.drainDeadlineSeconds }}s"
        - name: RELAY_LOG_JSON
          value: {{ .Values.relay.logJson | quote }}
        {{- if .Values.relay.logLevel }}
        - name: RUST_LOG
          value: {{ .Values.relay.logLevel | quote }}
        {{- end }}
        {{- if .Values.config.enabled }}
        - name: RELAY_CONFIG
          value: "{{ .Values.config.mountPath }}/relay.toml"
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        # With hostNetwork these are host ports: the scheduler then also refuses to put two
        # relays on one node. Media (UDP portMin-portMax) is not listed: thousands of ports.
        - name: grpc
          containerPort: {{ .Values.control.port }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
        successThreshold: {{ .Values.probes.readiness.successThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      {{- if gt (int .Values.lifecycle.preStopSleepSeconds) 0 }}
      lifecycle:
        # SIGTERM (which starts the relay's drain) follows this sleep; see values.yaml.
        preStop:
          sleep:
            seconds: {{ .Values.lifecycle.preStopSleepSeconds }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if .Values.config.enabled }}
        - name: config
          mountPath: {{ .Values.config.mountPath }}
          readOnly: true
        {{- end }}
        {{- if .Values.control.tls.enabled }}
        - name: control-tls
          mountPath: {{ .Values.control.tls.mountPath }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.volumes.tmpSizeLimit }}
    {{- if .Values.config.enabled }}
    - name: config
      configMap:
        name: {{ include "relay.fullname" . }}-config
    {{- end }}
    {{- if .Values.control.tls.enabled }}
    - name: control-tls
      secret:
        secretName: {{ .Values.control.tls.existingSecret }}
        # Owner root, group the pod's fsGroup (the relay's group): 0440 keeps the key private.
        defaultMode: 0440
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
Refuse configurations that cannot work, at render time rather than at 3 a.m.
*/}}
{{- define "relay.validate" -}}
{{- if not (has .Values.kind (list "Deployment" "DaemonSet")) }}
{{- fail (printf "kind must be Deployment or DaemonSet (got %q)" .Values.kind) }}
{{- end }}
{{- $range := add (sub (int .Values.media.portMax) (int .Values.media.portMin)) 1 }}
{{- if lt $range 1 }}
{{- fail (printf "media.portMin (%v) must not exceed media.portMax (%v)" .Values.media.portMin .Values.media.portMax) }}
{{- end }}
{{- $need := mul (int .Values.relay.capacity) (int (include "relay.portsPerCall" .)) }}
{{- if gt $need $range }}
{{- fail (printf "media port range %v-%v holds %d ports but relay.capacity %v calls x %s ports per call needs %d: widen the range or lower the capacity" .Values.media.portMin .Values.media.portMax $range .Values.relay.capacity (include "relay.portsPerCall" .) $need) }}
{{- end }}
{{- if and (eq .Values.kind "DaemonSet") .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs kind=Deployment (a DaemonSet's size is its node count)" }}
{{- end }}
{{- if and .Values.control.tls.enabled (not .Values.control.tls.existingSecret) }}
{{- fail "control.tls.enabled needs control.tls.existingSecret (a Secret with the certificate and key)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled" }}
{{- end }}
{{- end }}
