//! The real kube-apiserver test environment (`support::kube_env`): cert-manager CRDs, issuers,
//! Ingresses and Services apply as in a real cluster, and objects survive an API server restart.
//! Needs `tests/kube-testenv/build.sh` to have run.

use crate::support::kube_env::KubeEnv;

fn get_json(env: &KubeEnv, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = env.kubectl(&all, None);
    assert_eq!(code, 0, "kubectl {all:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {all:?}: {e}: {out}"))
}

#[test]
fn cert_manager_issuers_and_an_ingress_apply_to_a_real_api_server() {
    let env = KubeEnv::shared();
    env.install_cert_manager_crds();
    let ns = env.namespace("smoke");
    let issuer = format!("{ns}-le");

    env.apply(&format!(
        "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: {issuer}}}\nspec:\n  acme:\n    server: https://acme.example.test/dir\n    email: ops@example.test\n    privateKeySecretRef: {{name: le-account}}\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: pylon\n---\napiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {{name: local, namespace: {ns}}}\nspec: {{selfSigned: {{}}}}\n"
    ));
    env.apply(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  namespace: {ns}\n  annotations: {{cert-manager.io/cluster-issuer: {issuer}}}\nspec:\n  ingressClassName: pylon\n  tls: [{{hosts: [web.example.test], secretName: web-tls}}]\n  rules:\n  - host: web.example.test\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    ));

    // Fields the CRD does not declare are kept as written.
    let ci = get_json(env, &["clusterissuer", &issuer]);
    assert_eq!(ci["spec"]["acme"]["server"], "https://acme.example.test/dir");
    assert_eq!(
        ci["spec"]["acme"]["solvers"][0]["http01"]["ingress"]["ingressClassName"],
        "pylon"
    );
    let local = get_json(env, &["issuer", "-n", &ns, "local"]);
    assert!(local["spec"]["selfSigned"].is_object(), "{local}");

    let ing = get_json(env, &["ingress", "-n", &ns, "web"]);
    assert_eq!(ing["spec"]["rules"][0]["host"], "web.example.test");
    assert_eq!(
        ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
        issuer.as_str()
    );
    let svc = get_json(env, &["service", "-n", &ns, "web"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default();
    assert!(ip.starts_with("10.0.0."), "clusterIP {ip:?} from 10.0.0.0/24");

    // Validation is real: an invalid pathType is rejected.
    let (code, _, err) = env.kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  rules:\n  - http:\n      paths: [{{path: /, pathType: Bogus, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]\n"
        )),
    );
    assert_ne!(code, 0);
    assert!(err.contains("pathType"), "{err}");

    // A token-only kubeconfig reaches the same server.
    let kubeconfig = env.kubeconfig(Some(&env.admin_token));
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(text.contains(&env.server), "{text}");
}

#[test]
fn objects_survive_an_api_server_restart() {
    let mut env = KubeEnv::start();
    let ns = env.namespace("restart");
    env.apply(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: before, namespace: {ns}}}\ndata: {{k: v}}\n"
    ));
    let before = get_json(&env, &["configmap", "-n", &ns, "before"]);
    let server = env.server.clone();

    env.stop_apiserver();
    let (code, _, _) = env.kubectl(&["get", "--raw", "/readyz", "--request-timeout=2s"], None);
    assert_ne!(code, 0, "the API server is stopped");

    env.start_apiserver();
    assert_eq!(env.server, server, "same address after the restart");
    let after = get_json(&env, &["configmap", "-n", &ns, "before"]);
    assert_eq!(after["data"]["k"], "v");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}
